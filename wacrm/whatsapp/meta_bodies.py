"""Builders for Cloud API message bodies, checked against Meta's limits before sending.

A limit broken here is a ``ValueError`` naming the field and the limit, raised where the
message is composed, instead of a (#131009) from Meta after a round trip and a retry budget.
Limits come from facts/whatsapp.md §2; the list-message limits (rows, sections, lengths) and
the 1024-character media caption are Meta's reference values, not re-verified there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

MAX_TEXT_BODY = 4096
MAX_CAPTION = 1024
MAX_INTERACTIVE_BODY = 1024
MAX_HEADER_TEXT = 60
MAX_FOOTER = 60
MAX_BUTTONS = 3
MAX_BUTTON_TITLE = 20
MAX_BUTTON_ID = 256
MAX_LIST_BUTTON = 20
MAX_LIST_SECTIONS = 10
MAX_LIST_ROWS = 10  # across all sections
MAX_ROW_TITLE = 24
MAX_ROW_DESCRIPTION = 72
MAX_ROW_ID = 200
MAX_SECTION_TITLE = 24
MAX_CALLBACK_DATA = 512

MediaKind = Literal["image", "document", "video", "audio", "sticker"]
MEDIA_KINDS: frozenset[str] = frozenset({"image", "document", "video", "audio", "sticker"})

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def recipient(to: str) -> str:
    """``to`` as ``+`` and digits. Meta prepends the *business* number's country code to a
    number without ``+``, so a bare national number would silently go to the wrong person;
    a ``wa_id`` (digits, country code first) gets its ``+`` here."""
    cleaned = re.sub(r"[\s\-().]", "", to or "")
    if cleaned.isdigit() and not cleaned.startswith("0"):
        cleaned = "+" + cleaned
    if not _E164.match(cleaned):
        raise ValueError(
            f"recipient {to!r} is not an international number: use + and the country code"
        )
    return cleaned


def _check_len(field: str, value: str, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string")
    if len(value) > limit:
        raise ValueError(f"{field} is {len(value)} characters; the limit is {limit}")
    return value


def _base(to: str, kind: str, reply_to: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": recipient(to),
        "type": kind,
    }
    if reply_to:
        body["context"] = {"message_id": reply_to}
    return body


def text_message(
    to: str, body: str, *, preview_url: bool = False, reply_to: str | None = None
) -> dict[str, Any]:
    msg = _base(to, "text", reply_to)
    msg["text"] = {"body": _check_len("text body", body, MAX_TEXT_BODY), "preview_url": preview_url}
    return msg


def media_message(
    to: str,
    kind: MediaKind,
    *,
    media_id: str | None = None,
    link: str | None = None,
    caption: str | None = None,
    filename: str | None = None,
    reply_to: str | None = None,
) -> dict[str, Any]:
    """Image, document, video, audio or sticker by uploaded ``media_id`` (preferred: a link
    is cached by Meta for only 10 min) or by public ``link``; exactly one of the two."""
    if kind not in MEDIA_KINDS:
        raise ValueError(f"media kind must be one of {sorted(MEDIA_KINDS)}, got {kind!r}")
    if (media_id is None) == (link is None):
        raise ValueError("give exactly one of media_id or link")
    obj: dict[str, Any] = {"id": media_id} if media_id is not None else {"link": link}
    if caption is not None:
        if kind in ("audio", "sticker"):
            raise ValueError(f"{kind} messages cannot have a caption")
        obj["caption"] = _check_len("caption", caption, MAX_CAPTION)
    if filename is not None:
        if kind != "document":
            raise ValueError("only documents have a filename")
        obj["filename"] = _check_len("filename", filename, 240)
    msg = _base(to, kind, reply_to)
    msg[kind] = obj
    return msg


def location_message(
    to: str,
    latitude: float,
    longitude: float,
    *,
    name: str | None = None,
    address: str | None = None,
    reply_to: str | None = None,
) -> dict[str, Any]:
    if not -90.0 <= latitude <= 90.0 or not -180.0 <= longitude <= 180.0:
        raise ValueError(f"location ({latitude}, {longitude}) is outside the valid range")
    obj: dict[str, Any] = {"latitude": latitude, "longitude": longitude}
    if name:
        obj["name"] = name
    if address:
        obj["address"] = address
    msg = _base(to, "location", reply_to)
    msg["location"] = obj
    return msg


def template_message(
    to: str,
    name: str,
    language_code: str,
    components: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """An approved template: the only thing Meta delivers outside the 24 h window."""
    obj: dict[str, Any] = {
        "name": _check_len("template name", name, 512),
        "language": {"code": _check_len("template language code", language_code, 16)},
    }
    if components:
        obj["components"] = [dict(c) for c in components]
    msg = _base(to, "template", None)
    msg["template"] = obj
    return msg


def template_label(body: Mapping[str, Any]) -> str:
    """What a template message shows as its text (``[template name/lang]``), e.g. when a
    free-form reply is replaced by its template fallback."""
    template = body.get("template")
    template = template if isinstance(template, Mapping) else {}
    language = template.get("language")
    code = language.get("code") if isinstance(language, Mapping) else None
    return f"[template {template.get('name')}/{code}]"


def body_parameters(*texts: str) -> list[dict[str, Any]]:
    """Components for a template whose body has ``{{1}}``, ``{{2}}``… text placeholders."""
    return [{"type": "body", "parameters": [{"type": "text", "text": t} for t in texts]}]


@dataclass(frozen=True, slots=True)
class ReplyButton:
    id: str
    title: str


@dataclass(frozen=True, slots=True)
class ListRow:
    id: str
    title: str
    description: str | None = None


@dataclass(frozen=True, slots=True)
class ListSection:
    title: str | None
    rows: tuple[ListRow, ...]


def _interactive(
    to: str,
    kind: str,
    body: str,
    action: dict[str, Any],
    header: str | None,
    footer: str | None,
    reply_to: str | None,
) -> dict[str, Any]:
    obj: dict[str, Any] = {"type": kind}
    if header is not None:
        obj["header"] = {"type": "text", "text": _check_len("header", header, MAX_HEADER_TEXT)}
    obj["body"] = {"text": _check_len("interactive body", body, MAX_INTERACTIVE_BODY)}
    if footer is not None:
        obj["footer"] = {"text": _check_len("footer", footer, MAX_FOOTER)}
    obj["action"] = action
    msg = _base(to, "interactive", reply_to)
    msg["interactive"] = obj
    return msg


def _unique(field: str, values: Sequence[str]) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"{field} must be unique")


def buttons_message(
    to: str,
    body: str,
    buttons: Sequence[ReplyButton],
    *,
    header: str | None = None,
    footer: str | None = None,
    reply_to: str | None = None,
) -> dict[str, Any]:
    """Up to three reply buttons; a tap comes back as ``interactive.button_reply{id,title}``."""
    if not 1 <= len(buttons) <= MAX_BUTTONS:
        raise ValueError(f"{len(buttons)} buttons; give 1 to {MAX_BUTTONS}")
    _unique("button ids", [b.id for b in buttons])
    _unique("button titles", [b.title for b in buttons])
    action = {
        "buttons": [
            {
                "type": "reply",
                "reply": {
                    "id": _check_len("button id", b.id, MAX_BUTTON_ID),
                    "title": _check_len("button title", b.title, MAX_BUTTON_TITLE),
                },
            }
            for b in buttons
        ]
    }
    return _interactive(to, "button", body, action, header, footer, reply_to)


def list_message(
    to: str,
    body: str,
    button: str,
    sections: Sequence[ListSection],
    *,
    header: str | None = None,
    footer: str | None = None,
    reply_to: str | None = None,
) -> dict[str, Any]:
    """A list of rows in sections behind one button; a pick arrives as ``list_reply``."""
    if not 1 <= len(sections) <= MAX_LIST_SECTIONS:
        raise ValueError(f"{len(sections)} sections; give 1 to {MAX_LIST_SECTIONS}")
    rows = [row for section in sections for row in section.rows]
    if not 1 <= len(rows) <= MAX_LIST_ROWS:
        raise ValueError(f"{len(rows)} rows in all; give 1 to {MAX_LIST_ROWS}")
    _unique("row ids", [r.id for r in rows])
    if len(sections) > 1 and any(not s.title for s in sections):
        raise ValueError("every section needs a title when there is more than one")
    out_sections = []
    for section in sections:
        out: dict[str, Any] = {}
        if section.title:
            out["title"] = _check_len("section title", section.title, MAX_SECTION_TITLE)
        out["rows"] = []
        for row in section.rows:
            item = {
                "id": _check_len("row id", row.id, MAX_ROW_ID),
                "title": _check_len("row title", row.title, MAX_ROW_TITLE),
            }
            if row.description:
                item["description"] = _check_len(
                    "row description", row.description, MAX_ROW_DESCRIPTION
                )
            out["rows"].append(item)
        out_sections.append(out)
    action = {
        "button": _check_len("list button", button, MAX_LIST_BUTTON),
        "sections": out_sections,
    }
    return _interactive(to, "list", body, action, header, footer, reply_to)


def with_callback_data(body: Mapping[str, Any], data: str) -> dict[str, Any]:
    """A copy of ``body`` carrying ``biz_opaque_callback_data``, echoed in status webhooks."""
    out = dict(body)
    out["biz_opaque_callback_data"] = _check_len("callback data", data, MAX_CALLBACK_DATA)
    return out
