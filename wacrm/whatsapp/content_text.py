"""Finding words, phrases and links in message text, by position in the original text.

Text and phrases are folded alike before comparing: NFKC compatibility forms, case folding,
accents on Latin letters, Arabic diacritics and tatweel removed, runs of whitespace as one
space. So "FREE", "ｆｒｅｅ" and "free" match, so do "Grátis" and "gratis", and "مَجَّاني" and
"مجاني". A phrase must stand as a whole word; in scripts written without spaces (Chinese,
Japanese, Thai…) it matches anywhere. Word boundaries are checked by hand because Python's
``\\b`` splits Devanagari words at their vowel signs (combining marks).

Arabic attaches articles and pronouns to a word, so "المجاني" is not the whole word
"مجاني": list such forms as phrases of their own.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

# Harakat, Quranic marks, superscript alef, hamza above/below; tatweel only stretches a word.
_ARABIC_MARKS = re.compile("[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0640]")
_NO_SPACE_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")

# A host name, after an optional scheme; not inside an e-mail address or a longer word.
_LINK = re.compile(
    r"(?<![\w@.\-/])(?P<scheme>https?://)?"
    r"(?P<host>(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.)+[a-z]{2,63})"
    r"(?P<rest>[/?#][^\s<>\"']*)?",
    re.IGNORECASE,
)
_TRAILING = ".,;:!?)]}'\""


@dataclass(frozen=True, slots=True)
class Match:
    """``phrase`` (as configured) found at ``text[start:end]``."""

    phrase: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Link:
    url: str
    host: str  # lower case, without "www."
    start: int


def line_col(text: str, index: int) -> tuple[int, int]:
    """1-based line and column (in characters) of ``text[index]``."""
    line = text.count("\n", 0, index) + 1
    return line, index - text.rfind("\n", 0, index)


def fold(text: str) -> tuple[str, list[int]]:
    """``text`` folded for matching, and for each folded character the index of the
    original character it came from."""
    out: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(text):
        if char.isspace():
            if not out or out[-1] != " ":
                out.append(" ")
                origin.append(index)
            continue
        for piece in unicodedata.normalize("NFKD", char.casefold()):
            if _ARABIC_MARKS.match(piece):
                continue
            # Marks on Latin letters go ("preco" is how many type "preço"); Devanagari vowel
            # signs are combining marks too, and carry meaning, so they stay.
            if unicodedata.combining(piece) and out and out[-1] < "\u0250":
                continue
            out.append(piece)
            origin.append(index)
    return "".join(out), origin


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_" or unicodedata.category(char).startswith("M")


def _unspaced(char: str) -> bool:
    return unicodedata.name(char, "").startswith(_NO_SPACE_SCRIPTS)


def find_phrases(text: str, phrases: Iterable[str]) -> list[Match]:
    """Every whole-word occurrence of each phrase in ``text``, in order of position."""
    folded, origin = fold(text)
    found: list[Match] = []
    for phrase in phrases:
        needle = fold(phrase)[0].strip()
        if not needle:
            continue
        check_left = not _unspaced(needle[0])
        check_right = not _unspaced(needle[-1])
        at = folded.find(needle)
        while at != -1:
            end = at + len(needle)
            left_ok = not check_left or at == 0 or not _is_word(folded[at - 1])
            right_ok = not check_right or end == len(folded) or not _is_word(folded[end])
            if left_ok and right_ok:
                found.append(Match(phrase, origin[at], origin[end - 1] + 1))
            at = folded.find(needle, at + 1)
    return sorted(found, key=lambda m: (m.start, m.phrase))


def find_links(text: str) -> list[Link]:
    """Links in ``text``: anything with a scheme, a ``www.`` host, or a host and a path
    (``bit.ly/x``). A bare domain in a sentence ("bit.ly") is not a link."""
    links = []
    for m in _LINK.finditer(text):
        host = m["host"].lower()
        if not (m["scheme"] or m["rest"] or host.startswith("www.")):
            continue
        url = m.group(0).rstrip(_TRAILING)
        links.append(Link(url, host.removeprefix("www."), m.start()))
    return links


def on_domain(host: str, domains: Iterable[str]) -> str | None:
    """The domain of ``domains`` that ``host`` is, or is under; None if none."""
    for domain in domains:
        if host == domain or host.endswith("." + domain):
            return domain
    return None
