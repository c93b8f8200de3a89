"""Content and size policy for a Cloud API send body, checked before the body leaves.

*Errors* are what Meta would reject anyway (a text over 4096 characters, a caption over 1024,
a fourth reply button, an image over 5 MB, a GIF sent as an image…): sending them only burns a
request and a retry budget. *Warnings* are what gets a number reported as spam: words typical
of bulk promotion (setting ``content_sensitive_words``) and links hidden behind a shortener
(built-in list plus ``content_shorteners``). Errors always stop a send; warnings stop it only
with ``content_policy = "block"`` (see :func:`blocking`).

Limits: facts/whatsapp.md §2 and Meta's message pages (text 4096, caption 1024, interactive
body 1024, header and footer 60, reply buttons ≤ 3 titled ≤ 20, lists ≤ 10 sections and
≤ 10 rows in all), shared with :mod:`wacrm.whatsapp.meta_bodies`; media in
:mod:`wacrm.whatsapp.content_media`. These are Meta's, whichever provider sends; a provider's
lower limit is checked where its request is built, before pacing (Twilio's 1,600 characters
of ``Body``: :mod:`wacrm.whatsapp.twilio_bodies`).

``Finding.where`` names the field (``text.body``, ``interactive.action.buttons[3].reply.title``,
0-based indexes); a finding at a place inside a text adds it: ``text.body, line 3, column 12``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from wacrm.config import ConfigError, Settings
from wacrm.whatsapp import meta_bodies as mb
from wacrm.whatsapp.content_media import (
    MEDIA_KINDS,
    MEDIA_LIMIT,
    MEDIA_MIME,
    STATIC_STICKER_LIMIT,
    bare_mime,
    human_size,
    is_animated_webp,
    mime_for,
)
from wacrm.whatsapp.content_text import find_links, find_phrases, line_col, on_domain

Severity = Literal["error", "warning"]

DEFAULT_SENSITIVE_WORDS = ("free", "limited time")
# Public link shorteners: they hide where a link goes, so spam filters distrust them.
SHORTENER_DOMAINS = frozenset(
    {
        "bit.ly",
        "bl.ink",
        "buff.ly",
        "cutt.ly",
        "goo.gl",
        "is.gd",
        "ow.ly",
        "rb.gy",
        "rebrand.ly",
        "s.id",
        "shorturl.at",
        "t.co",
        "t.ly",
        "tiny.cc",
        "tinyurl.com",
        "v.gd",
    }
)
MESSAGE_TYPES = frozenset(
    {"text", "location", "contacts", "interactive", "template", "reaction", *MEDIA_KINDS}
)
INTERACTIVE_TYPES = frozenset(
    {"button", "list", "cta_url", "flow", "location_request_message", "product", "product_list"}
)
_DOMAIN = re.compile(r"^(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_WHERE = re.compile(r"^(?P<field>.*?)(?:, line (?P<line>\d+), column (?P<col>\d+))?$")
# Keys whose values the recipient never reads as text (ids, codes, URLs Meta fetches).
_HIDDEN_KEYS = frozenset(
    {
        "id",
        "link",
        "mime_type",
        "sha256",
        "type",
        "code",
        "policy",
        "sub_type",
        "index",
        "payload",
        "catalog_id",
        "product_retailer_id",
        "thumbnail_product_retailer_id",
        "flow_id",
        "flow_token",
        "flow_action",
        "flow_message_version",
        "mode",
        "preview_url",
        "message_id",
        "emoji",
    }
)


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Literal["error", "warning"]
    message: str
    where: str = ""


@dataclass(frozen=True)
class ContentPolicy:
    """What counts as a warning, and whether warnings stop a send."""

    sensitive_words: tuple[str, ...] = DEFAULT_SENSITIVE_WORDS
    shortener_domains: frozenset[str] = SHORTENER_DOMAINS
    block_warnings: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ContentPolicy:
        """The policy of ``settings``; a bad value is a :class:`ConfigError` naming it."""
        mode = settings.content_policy.strip().lower()
        if mode not in ("warn", "block"):
            raise ConfigError(
                f"WACRM_CONTENT_POLICY must be 'warn' or 'block', got {settings.content_policy!r}"
            )
        words = tuple(
            w.strip() for w in re.split(r"[,،]", settings.content_sensitive_words) if w.strip()
        )
        extra = set()
        for raw in re.split(r"[,\s]+", settings.content_shorteners.strip()):
            if not raw:
                continue
            domain = re.sub(r"^https?://", "", raw.lower()).rstrip("/").removeprefix("www.")
            if not _DOMAIN.match(domain):
                raise ConfigError(f"WACRM_CONTENT_SHORTENERS: {raw!r} is not a domain like bit.ly")
            extra.add(domain)
        return cls(words, SHORTENER_DOMAINS | extra, mode == "block")


def blocking(findings: Sequence[Finding], policy: ContentPolicy) -> list[Finding]:
    """The findings that must stop a send: errors always, warnings with ``block_warnings``."""
    return [f for f in findings if f.severity == "error" or policy.block_warnings]


def located(field: str, text: str, index: int) -> str:
    """``where`` for ``text[index]`` of ``field``: ``text.body, line 3, column 12``."""
    line, col = line_col(text, index)
    return f"{field}, line {line}, column {col}"


def split_where(where: str) -> tuple[str, int | None, int | None]:
    """``text.body, line 3, column 12`` → ``("text.body", 3, 12)``; no place → Nones."""
    m = _WHERE.match(where)
    assert m is not None  # the pattern matches any string
    line, col = m["line"], m["col"]
    return m["field"], int(line) if line else None, int(col) if col else None


# --- structure and size -------------------------------------------------------------------


def _error(code: str, message: str, where: str) -> Finding:
    return Finding(code, "error", message, where)


def _length(
    value: Any, where: str, limit: int, *, required: bool = True, code: str = "field-too-long"
) -> list[Finding]:
    empty = "text-empty" if code == "text-too-long" else "field-empty"
    if value is None:
        return [_error(empty, f"{where} is missing", where)] if required else []
    if not isinstance(value, str):
        return [_error("bad-shape", f"{where} must be text, got {type(value).__name__}", where)]
    if not value.strip():
        return [_error(empty, f"{where} is empty; WhatsApp rejects an empty text", where)]
    if len(value) > limit:
        over = len(value) - limit
        return [
            _error(
                code,
                f"{where} is {len(value)} characters; the limit is {limit} ({over} over)",
                located(where, value, limit),
            )
        ]
    return []


def _text(obj: Mapping[str, Any]) -> list[Finding]:
    return _length(obj.get("body"), "text.body", mb.MAX_TEXT_BODY, code="text-too-long")


def _media(kind: str, obj: Mapping[str, Any], size: int | None, mime: str | None) -> list[Finding]:
    found: list[Finding] = []
    if ("id" in obj) == ("link" in obj):
        found.append(_error("media-missing", f"{kind} needs exactly one of id or link", kind))
    caption = obj.get("caption")
    if caption is not None and kind in ("audio", "sticker"):
        found.append(_error("caption-not-allowed", f"{kind} messages have no caption", kind))
    elif caption is not None:
        found += _length(caption, f"{kind}.caption", mb.MAX_CAPTION, code="caption-too-long")
    if mime is None and isinstance(obj.get("link"), str):
        mime = mime_for(obj["link"].split("?", 1)[0])
        where = f"{kind}.link"
    else:
        where = kind
    return found + media_checks(kind, size, mime, where=where)


def media_checks(
    kind: str, size: int | None, mime: str | None, *, where: str, animated: bool | None = None
) -> list[Finding]:
    """Size and MIME type of a ``kind`` file; ``animated`` tells a sticker's limit (None:
    unknown, so over the static limit is a warning only)."""
    found: list[Finding] = []
    if mime is not None and bare_mime(mime) not in MEDIA_MIME[kind]:
        allowed = ", ".join(sorted(MEDIA_MIME[kind]))
        found.append(
            _error(
                "media-type-unsupported",
                f"{bare_mime(mime)} cannot be sent as {kind} (allowed: {allowed})",
                where,
            )
        )
    if size is None:
        return found
    limit = MEDIA_LIMIT[kind]
    if kind == "sticker" and animated is False:
        limit = STATIC_STICKER_LIMIT
    if size > limit:
        what = "a static sticker" if limit == STATIC_STICKER_LIMIT else kind
        found.append(
            _error(
                "media-too-large",
                f"{human_size(size)} ({size} bytes) is over the {human_size(limit)} limit "
                f"for {what}",
                where,
            )
        )
    elif kind == "sticker" and animated is None and size > STATIC_STICKER_LIMIT:
        found.append(
            Finding(
                "sticker-maybe-too-large",
                "warning",
                f"{human_size(size)} is over the {human_size(STATIC_STICKER_LIMIT)} limit for "
                "a static sticker; only an animated one may be this large",
                where,
            )
        )
    return found


def _location(obj: Mapping[str, Any]) -> list[Finding]:
    lat, lon = obj.get("latitude"), obj.get("longitude")
    ok = (
        isinstance(lat, int | float)
        and isinstance(lon, int | float)
        and -90 <= lat <= 90
        and -180 <= lon <= 180
    )
    if ok:
        return []
    return [
        _error("location-out-of-range", f"location ({lat}, {lon}) is not a valid place", "location")
    ]


def _unique(values: list[Any], what: str, where: str, code: str = "duplicate-id") -> list[Finding]:
    seen = [v for v in values if isinstance(v, str)]
    dupes = sorted({v for v in seen if seen.count(v) > 1})
    if not dupes:
        return []
    return [_error(code, f"{what} must be unique; {dupes[0]!r} repeats", where)]


def _count(items: Any, what: str, where: str, limit: int, code: str) -> list[Finding]:
    if not isinstance(items, list):
        return [_error("bad-shape", f"{where} must be a list of {what}", where)]
    if not 1 <= len(items) <= limit:
        return [_error(code, f"{len(items)} {what}; give 1 to {limit}", where)]
    return []


def _buttons(action: Mapping[str, Any]) -> list[Finding]:
    where = "interactive.action.buttons"
    buttons = action.get("buttons")
    found = _count(buttons, "reply buttons", where, mb.MAX_BUTTONS, "button-count")
    if not isinstance(buttons, list):
        return found
    replies = [b.get("reply") if isinstance(b, Mapping) else None for b in buttons]
    for i, reply in enumerate(replies):
        at = f"{where}[{i}].reply"
        if not isinstance(reply, Mapping):
            found.append(_error("bad-shape", f"{at} must be an object with id and title", at))
            continue
        found += _length(reply.get("id"), f"{at}.id", mb.MAX_BUTTON_ID)
        found += _length(reply.get("title"), f"{at}.title", mb.MAX_BUTTON_TITLE)
    ok = [r for r in replies if isinstance(r, Mapping)]
    found += _unique([r.get("id") for r in ok], "button ids", where)
    return found + _unique([r.get("title") for r in ok], "button titles", where, "duplicate-title")


def _list(action: Mapping[str, Any]) -> list[Finding]:
    where = "interactive.action.sections"
    found = _length(action.get("button"), "interactive.action.button", mb.MAX_LIST_BUTTON)
    sections = action.get("sections")
    found += _count(sections, "sections", where, mb.MAX_LIST_SECTIONS, "section-count")
    if not isinstance(sections, list):
        return found
    row_ids: list[Any] = []
    total = 0
    for i, section in enumerate(sections):
        at = f"{where}[{i}]"
        if not isinstance(section, Mapping) or not isinstance(section.get("rows"), list):
            found.append(_error("bad-shape", f"{at} must be an object with rows", at))
            continue
        title = section.get("title")
        if title is None and len(sections) > 1:
            found.append(_error("field-empty", f"{at}.title is needed when there are sections", at))
        found += _length(title, f"{at}.title", mb.MAX_SECTION_TITLE, required=False)
        for j, row in enumerate(section["rows"]):
            total += 1
            rat = f"{at}.rows[{j}]"
            if not isinstance(row, Mapping):
                found.append(_error("bad-shape", f"{rat} must be an object", rat))
                continue
            row_ids.append(row.get("id"))
            found += _length(row.get("id"), f"{rat}.id", mb.MAX_ROW_ID)
            found += _length(row.get("title"), f"{rat}.title", mb.MAX_ROW_TITLE)
            found += _length(
                row.get("description"), f"{rat}.description", mb.MAX_ROW_DESCRIPTION, required=False
            )
    if not 1 <= total <= mb.MAX_LIST_ROWS:
        found.append(
            _error(
                "row-count", f"{total} rows in all sections; give 1 to {mb.MAX_LIST_ROWS}", where
            )
        )
    return found + _unique(row_ids, "row ids", where)


def _interactive(obj: Mapping[str, Any]) -> list[Finding]:
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in INTERACTIVE_TYPES:
        known = ", ".join(sorted(INTERACTIVE_TYPES))
        where = "interactive.type"
        return [_error("unknown-type", f"{where} {kind!r} is not one of {known}", where)]
    found: list[Finding] = []
    header = obj.get("header")
    if isinstance(header, Mapping) and header.get("type") == "text":
        found += _length(header.get("text"), "interactive.header.text", mb.MAX_HEADER_TEXT)
    body = obj.get("body")
    body_text = body.get("text") if isinstance(body, Mapping) else None
    required = kind in ("button", "list", "cta_url")
    found += _length(body_text, "interactive.body.text", mb.MAX_INTERACTIVE_BODY, required=required)
    footer = obj.get("footer")
    if isinstance(footer, Mapping):
        found += _length(footer.get("text"), "interactive.footer.text", mb.MAX_FOOTER)
    action = obj.get("action")
    if kind in ("button", "list") and not isinstance(action, Mapping):
        return [*found, _error("bad-shape", "interactive.action must be an object", "interactive")]
    if kind == "button" and isinstance(action, Mapping):
        found += _buttons(action)
    elif kind == "list" and isinstance(action, Mapping):
        found += _list(action)
    return found


def _template(obj: Mapping[str, Any]) -> list[Finding]:
    found = _length(obj.get("name"), "template.name", 512)
    language = obj.get("language")
    code = language.get("code") if isinstance(language, Mapping) else None
    return found + _length(code, "template.language.code", 16)


# --- words and links -----------------------------------------------------------------------


def _visible(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """(where, text) for every string the recipient reads."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if key not in _HIDDEN_KEYS and where + "." + str(key) != "template.name":
                yield from _visible(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _visible(item, f"{where}[{i}]")


def text_warnings(text: str, where: str, policy: ContentPolicy) -> list[Finding]:
    """Sensitive words and shortened links in one text, each with its place."""
    found = []
    for match in find_phrases(text, policy.sensitive_words):
        seen = text[match.start : match.end]
        listed = (
            "" if seen.casefold() == match.phrase.casefold() else f" (listed: {match.phrase!r})"
        )
        found.append(
            Finding(
                "sensitive-word",
                "warning",
                f"{seen!r}{listed} is a sensitive word: typical of bulk promotion",
                located(where, text, match.start),
            )
        )
    for link in find_links(text):
        domain = on_domain(link.host, policy.shortener_domains)
        if domain is not None:
            found.append(
                Finding(
                    "link-shortener",
                    "warning",
                    f"{link.url} goes through the link shortener {domain}",
                    located(where, text, link.start),
                )
            )
    return found


# --- entry points --------------------------------------------------------------------------


def lint_send_body(
    body: Mapping[str, Any],
    policy: ContentPolicy,
    *,
    media_size: int | None = None,
    media_mime: str | None = None,
) -> list[Finding]:
    """Everything wrong with a ``/messages`` send body: the size and shape checks in field
    order, then the words and links of every text the recipient reads. ``media_size`` and
    ``media_mime`` describe the file of a media message when the caller knows them (an
    upload); otherwise the extension of a ``link`` is checked."""
    if not isinstance(body, Mapping):
        return [_error("bad-shape", "a send body must be a JSON object", "")]
    kind = body.get("type", "text")  # Meta's default
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        known = ", ".join(sorted(MESSAGE_TYPES))
        return [_error("unknown-type", f"type {kind!r} is not one of {known}", "type")]
    obj = body.get(kind)
    if not isinstance(obj, Mapping):
        return [_error("bad-shape", f"a {kind} message needs a {kind!r} object", str(kind))]
    found: list[Finding] = []
    if kind == "text":
        found = _text(obj)
    elif kind in MEDIA_KINDS:
        found = _media(kind, obj, media_size, media_mime)
    elif kind == "location":
        found = _location(obj)
    elif kind == "interactive":
        found = _interactive(obj)
    elif kind == "template":
        found = _template(obj)
    for where, text in _visible(obj, kind):
        found += text_warnings(text, where, policy)
    return found


def lint_media_file(path: Path, kind: str, policy: ContentPolicy) -> list[Finding]:
    """Size and type (by extension; a sticker's animation from its header) of a file to be
    sent as ``kind``; raises OSError if it cannot be read. ``policy`` is taken for symmetry:
    a file has no words to check."""
    del policy
    where = str(path)
    if kind not in MEDIA_KINDS:
        known = ", ".join(MEDIA_KINDS)
        return [_error("unknown-type", f"media kind {kind!r} is not one of {known}", where)]
    mime = mime_for(path.name)
    if mime is None:
        return [
            _error(
                "media-type-unsupported",
                f"{path.name}: unknown extension; allowed for {kind}: "
                + ", ".join(sorted(MEDIA_MIME[kind])),
                where,
            )
        ]
    size = path.stat().st_size
    animated = None
    if kind == "sticker":
        with path.open("rb") as fh:
            animated = is_animated_webp(fh.read(32))
    return media_checks(kind, size, mime, where=where, animated=animated)
