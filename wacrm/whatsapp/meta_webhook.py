"""Meta Cloud API webhooks: signature check, envelope splitting and payload parsing.

The envelope is split into one *event* per ``messages[]`` / ``statuses[]`` element (every
``entry`` and every ``change``), each keeping the context it needs (``metadata``, the matching
``contacts[]`` entry) so it can be parsed later on its own. Parsing is deliberately lenient:
unknown types and statuses become ``UNKNOWN``; only a missing id makes an element unusable.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from wacrm.model import (
    DeliveryStatus,
    InboundMessage,
    Location,
    MediaRef,
    MessageType,
    StatusUpdate,
)

PROVIDER = "meta"
SIGNATURE_HEADER = "x-hub-signature-256"


class PayloadError(ValueError):
    """The webhook body is not a usable WhatsApp envelope; the message says why."""


def sign(raw_body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``raw_body``."""
    return "sha256=" + hmac.new(app_secret.encode(), raw_body, hashlib.sha256).hexdigest()


def verify_signature(raw_body: bytes, header: str | None, app_secret: str) -> bool:
    """Check the HMAC over the raw bytes in constant time; fail closed without a secret."""
    if not app_secret or not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(sign(raw_body, app_secret), header.strip())


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One storable event from an envelope."""

    phone_number_id: str | None
    kind: str  # message | status | error | field:<name>
    event_id: str | None
    payload: dict[str, Any]


def _obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (lenient parsing)."""
    return value if isinstance(value, dict) else {}


def _arr(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _digest(obj: Any) -> str:
    import orjson

    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def split_envelope(doc: Any) -> Iterator[WebhookEvent]:
    """Yield every event in a webhook body. Raises :class:`PayloadError` if not an envelope."""
    if not isinstance(doc, dict):
        raise PayloadError("body must be a JSON object")
    entries = doc.get("entry")
    if not isinstance(entries, list):
        raise PayloadError("body has no 'entry' array")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("changes"), list):
            raise PayloadError("an entry has no 'changes' array")
        for change in entry["changes"]:
            if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
                raise PayloadError("a change has no 'value' object")
            yield from _split_change(entry.get("id"), change)


def _split_change(waba_id: Any, change: dict[str, Any]) -> Iterator[WebhookEvent]:
    value: dict[str, Any] = change["value"]
    field = str(change.get("field") or "messages")
    metadata = _obj(value.get("metadata"))
    pnid = metadata.get("phone_number_id")
    phone_number_id = str(pnid) if pnid is not None else None
    if field != "messages":
        # Account updates, template and quality changes: kept, keyed by their content.
        yield WebhookEvent(
            phone_number_id,
            f"field:{field}",
            _digest(change),
            {"waba_id": waba_id, "field": field, "value": value},
        )
        return
    contacts = _arr(value.get("contacts"))
    by_wa_id = {
        c["wa_id"]: c for c in contacts if isinstance(c, dict) and isinstance(c.get("wa_id"), str)
    }
    for msg in _arr(value.get("messages")):
        if not isinstance(msg, dict):
            continue
        sender = msg.get("from")
        contact = (by_wa_id.get(sender) if isinstance(sender, str) else None) or (
            contacts[0] if len(contacts) == 1 else None
        )
        msg_id = msg.get("id")
        yield WebhookEvent(
            phone_number_id,
            "message",
            str(msg_id) if msg_id else None,
            {"metadata": metadata, "contact": contact, "message": msg},
        )
    for status in _arr(value.get("statuses")):
        if not isinstance(status, dict):
            continue
        sid, state = status.get("id"), status.get("status")
        yield WebhookEvent(
            phone_number_id,
            "status",
            f"{sid}:{state}" if sid and state else None,
            {"metadata": metadata, "status": status},
        )
    for error in _arr(value.get("errors")):
        yield WebhookEvent(
            phone_number_id, "error", _digest(error), {"metadata": metadata, "error": error}
        )


def _timestamp(raw: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(raw), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return datetime.now(UTC)


def _media(body: dict[str, Any]) -> MediaRef:
    return MediaRef(
        id=body.get("id"),
        mime_type=body.get("mime_type"),
        sha256=body.get("sha256"),
        url=body.get("url"),
        caption=body.get("caption"),
        filename=body.get("filename"),
    )


def _text_of(mtype: MessageType, msg: dict[str, Any]) -> str | None:
    """The human-readable text of a message: what keyword rules and tickets read."""
    body = _obj(msg.get(str(msg.get("type") or "")))
    if mtype is MessageType.TEXT:
        return str(body.get("body", ""))
    if mtype in (MessageType.IMAGE, MessageType.DOCUMENT, MessageType.VIDEO):
        return body.get("caption")
    if mtype is MessageType.BUTTON:
        return body.get("text") or body.get("payload")
    if mtype is MessageType.INTERACTIVE:
        for key in ("button_reply", "list_reply"):
            reply = body.get(key)
            if isinstance(reply, dict):
                return reply.get("title") or reply.get("id")
        return None
    if mtype is MessageType.REACTION:
        return body.get("emoji")
    if mtype is MessageType.LOCATION:
        parts = [body.get("name"), body.get("address")]
        return ", ".join(p for p in parts if p) or None
    if mtype is MessageType.SYSTEM:
        return body.get("body")
    if mtype is MessageType.ORDER:
        return body.get("text")
    return None


def parse_message(payload: dict[str, Any]) -> InboundMessage:
    """Parse one stored ``message`` event."""
    msg: dict[str, Any] = payload["message"]
    contact = _obj(payload.get("contact"))
    metadata = _obj(payload.get("metadata"))
    raw_type = str(msg.get("type") or "unknown")
    mtype = MessageType.parse(raw_type)
    body = _obj(msg.get(raw_type))
    media = (
        _media(body)
        if mtype
        in (
            MessageType.IMAGE,
            MessageType.DOCUMENT,
            MessageType.VIDEO,
            MessageType.AUDIO,
            MessageType.STICKER,
        )
        else None
    )
    location = None
    if mtype is MessageType.LOCATION:
        try:
            location = Location(
                latitude=float(body["latitude"]),
                longitude=float(body["longitude"]),
                name=body.get("name"),
                address=body.get("address"),
            )
        except (KeyError, TypeError, ValueError):
            location = None
    context = _obj(msg.get("context"))
    profile = _obj(contact.get("profile"))
    return InboundMessage(
        provider=PROVIDER,
        provider_message_id=str(msg["id"]),
        phone_number_id=str(metadata.get("phone_number_id") or ""),
        from_wa_id=msg.get("from") or contact.get("wa_id"),
        from_user_id=msg.get("from_user_id") or contact.get("user_id"),
        profile_name=profile.get("name"),
        timestamp=_timestamp(msg.get("timestamp")),
        type=mtype,
        raw_type=raw_type,
        text=_text_of(mtype, msg),
        media=media,
        location=location,
        context_message_id=context.get("id"),
        referral=msg.get("referral") if isinstance(msg.get("referral"), dict) else None,
        errors=tuple(e for e in msg.get("errors") or [] if isinstance(e, dict)),
    )


def parse_status(payload: dict[str, Any]) -> StatusUpdate:
    """Parse one stored ``status`` event."""
    status: dict[str, Any] = payload["status"]
    metadata = _obj(payload.get("metadata"))
    raw = str(status.get("status") or "unknown")
    return StatusUpdate(
        provider=PROVIDER,
        provider_message_id=str(status["id"]),
        phone_number_id=str(metadata.get("phone_number_id") or ""),
        recipient_id=status.get("recipient_id"),
        status=DeliveryStatus.parse(raw),
        raw_status=raw,
        timestamp=_timestamp(status.get("timestamp")),
        errors=tuple(e for e in status.get("errors") or [] if isinstance(e, dict)),
        pricing=status.get("pricing") if isinstance(status.get("pricing"), dict) else None,
    )
