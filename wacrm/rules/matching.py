"""Keyword matching that works the same in every script.

Text and keywords are folded alike (NFKC, casefold, accents on Latin letters, Arabic
diacritics and tatweel removed, Arabic letter variants unified, whitespace collapsed), so
"PRICE", "ｐｒｉｃｅ" and "price" match, so do "PREÇO" and "preco" (either way round: keyword
or text may carry the accent), and so do "السعر", "السِّعر" and "الســعر".

A keyword must stand as a whole word, with three exceptions that follow how people write:
- scripts written without spaces (Chinese, Japanese, Thai, …) have no word boundaries, so a
  keyword in them matches anywhere ("价格" in "请问价格多少");
- Arabic attaches articles and prepositions in front of a word and pronouns after it, so an
  Arabic keyword also matches with those attached ("سعر" in "السعر", "بالسعر", "سعره");
- Devanagari vowel signs are combining marks: they count as part of the word (Python's
  ``\\b`` does not think so, which is why boundaries are checked here by hand).
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

# Harakat, Quranic marks, superscript alef; tatweel only stretches a word on screen.
_ARABIC_MARKS = re.compile("[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0640]")
_ARABIC_FOLD = str.maketrans(
    {
        "\u0623": "\u0627",  # أ → ا
        "\u0625": "\u0627",  # إ → ا
        "\u0622": "\u0627",  # آ → ا
        "\u0671": "\u0627",  # ٱ → ا
        "\u0649": "\u064a",  # ى → ي (often typed for final ya)
        "\u06cc": "\u064a",  # Persian ی → ي
        "\u06a9": "\u0643",  # Persian ک → ك
        "\u0629": "\u0647",  # ة → ه (often typed without its dots)
    }
)
_SPACE = re.compile(r"\s+")
# Latin letters whose diacritic is part of the glyph (Unicode does not decompose a stroke), so
# removing combining marks leaves them alone; typed without it as often as "preco" is.
_LATIN_STROKES = str.maketrans(
    {"ł": "l", "đ": "d", "ø": "o", "ħ": "h", "ŧ": "t", "ƀ": "b", "ɨ": "i", "ı": "i"}
)

# Proclitics: (wa|fa)? + (bi|li|ka)? + (al)?, plus "lil" (li + al with the alef dropped).
_AR_PREFIXES = frozenset(
    "".join(parts) for parts in itertools.product(("", "و", "ف"), ("", "ب", "ل", "ك"), ("", "ال"))
) | {"لل", "ولل", "فلل"}
# Attached pronouns ("its price", "your prices"). Plural endings are left out on purpose:
# "سعرات" (calories) is not "سعر" (price); list plural forms as keywords of their own.
_AR_SUFFIXES = frozenset({"", "ه", "ها", "هم", "هما", "هن", "ك", "كم", "كما", "كن", "ي", "نا"})

_NO_SPACE_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


def _strip_latin_accents(text: str) -> str:
    # "preco" and "cuanto" are how many people type "preço" and "cuánto". Only marks on
    # Latin letters go: Devanagari vowel signs are combining marks too, and carry meaning.
    if text.isascii():
        return text
    out: list[str] = []
    for char in unicodedata.normalize("NFD", text):
        if unicodedata.combining(char) and out and out[-1] < "\u0250":
            continue
        out.append(char)
    return "".join(out).translate(_LATIN_STROKES)


def normalize(text: str) -> str:
    """Fold ``text`` for matching; keywords and patterns see text in this form."""
    folded = _strip_latin_accents(unicodedata.normalize("NFKC", text).casefold())
    folded = unicodedata.normalize("NFC", folded)
    folded = _ARABIC_MARKS.sub("", folded).translate(_ARABIC_FOLD)
    return _SPACE.sub(" ", folded).strip()


def _fold_pattern(pattern: str) -> str:
    # Not casefolded: that would turn \S into \s. Patterns run with IGNORECASE instead.
    folded = unicodedata.normalize("NFKC", pattern)
    return _ARABIC_MARKS.sub("", folded).translate(_ARABIC_FOLD)


def _is_word_char(char: str) -> bool:
    # Letters, combining marks (Devanagari vowel signs) and digits make up a word.
    return unicodedata.category(char)[0] in "LMN" or char == "_"


def _script(char: str) -> str:
    name = unicodedata.name(char, "")
    return name.split(" ", 1)[0]


def _is_arabic(text: str) -> bool:
    return any("\u0600" <= c <= "\u06ff" or "\u0750" <= c <= "\u077f" for c in text)


def _is_unspaced(text: str) -> bool:
    return any(_is_word_char(c) and _script(c).startswith(_NO_SPACE_SCRIPTS) for c in text)


@dataclass(frozen=True, slots=True)
class Keyword:
    """One keyword, folded once at load time."""

    raw: str
    folded: str
    arabic: bool
    unspaced: bool

    @classmethod
    def of(cls, raw: str) -> Keyword:
        folded = normalize(raw)
        return cls(raw, folded, _is_arabic(folded), _is_unspaced(folded))

    def found_in(self, folded_text: str) -> bool:
        """True if this keyword occurs as a word in already-folded text."""
        if not self.folded:
            return False
        start = folded_text.find(self.folded)
        while start >= 0:
            end = start + len(self.folded)
            if self.unspaced or self._bounded(folded_text, start, end):
                return True
            start = folded_text.find(self.folded, start + 1)
        return False

    def _bounded(self, text: str, start: int, end: int) -> bool:
        word_start = start
        while word_start > 0 and _is_word_char(text[word_start - 1]):
            word_start -= 1
        word_end = end
        while word_end < len(text) and _is_word_char(text[word_end]):
            word_end += 1
        prefix, suffix = text[word_start:start], text[end:word_end]
        if not prefix and not suffix:
            return True
        return self.arabic and prefix in _AR_PREFIXES and suffix in _AR_SUFFIXES


@dataclass(frozen=True, slots=True)
class TextMatcher:
    """Keywords and regular expressions of one trigger; any one of them matching is enough."""

    keywords: tuple[Keyword, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def build(cls, keywords: Iterable[str], patterns: Iterable[str]) -> TextMatcher:
        """Raises ``re.error`` for a bad pattern (the loader names the rule)."""
        return cls(
            tuple(Keyword.of(k) for k in keywords),
            tuple(re.compile(_fold_pattern(p), re.IGNORECASE) for p in patterns),
        )

    @property
    def empty(self) -> bool:
        return not self.keywords and not self.patterns

    def first_match(self, text: str | None) -> str | None:
        """The keyword or pattern that matched ``text`` (as written in the rule), or None."""
        if not text:
            return None
        folded = normalize(text)
        for keyword in self.keywords:
            if keyword.found_in(folded):
                return keyword.raw
        for pattern in self.patterns:
            if pattern.search(folded):
                return f"/{pattern.pattern}/"
        return None
