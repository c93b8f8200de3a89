"""Meta Cloud API webhooks: signature check, envelope splitting and payload parsing.

The envelope is split into one *event* per ``messages[]`` / ``statuses[]`` / ``errors[]``
element (every ``entry`` and every ``change``), each keeping the context it needs
(``metadata``, the matching ``contacts[]`` entry) so it can be parsed later on its own.
Splitting runs on the webhook hot path, so it only looks at ids; parsing into the frozen
domain types happens later, in the inbox processor.

An entry or change of the wrong shape becomes an event with a ``problem`` (quarantined with
that reason) and the rest of the body is still split: Meta re-sends a refused body as it was,
so refusing it all would refuse its good messages for days. Only a body that is not an
envelope at all is a :class:`PayloadError` (a 400). Changes of other fields (template,
quality, account updates) carry no ``phone_number_id``; they are routed by ``entry.id``, the
WhatsApp Business Account (WABA).

Parsing is deliberately lenient: unknown types and statuses become ``UNKNOWN``, a part with an
unexpected shape is left out (``None``), and only a missing id makes an element unusable. The
raw element is always kept in the inbox row, so nothing a later parser could read is lost.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from wacrm.model import (
    MEDIA_TYPES,
    ChoiceReply,
    DeliveryStatus,
    ErrorInfo,
    InboundMessage,
    Location,
    MediaRef,
    MessageContext,
    MessageType,
    Order,
    OrderItem,
    Reaction,
    Referral,
    SharedContact,
    StatusUpdate,
    SystemChange,
)

PROVIDER = "meta"
SIGNATURE_HEADER = "x-hub-signature-256"


class PayloadError(ValueError):
    """The webhook body is not a usable WhatsApp envelope; the message says why."""


def sign(raw_body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``raw_body``."""
    return "sha256=" + hmac.digest(app_secret.encode(), raw_body, "sha256").hex()


def verify_signature(raw_body: bytes, header: str | None, app_secret: str) -> bool:
    """Check the HMAC over the raw bytes in constant time; fail closed without a secret."""
    if not app_secret or not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(sign(raw_body, app_secret), header.strip())


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One storable event from an envelope."""

    phone_number_id: str | None
    kind: str  # message | status | error | field:<name> | malformed
    event_id: str | None
    payload: dict[str, Any]
    waba_id: str | None = None  # entry.id: routes events that have no phone_number_id
    problem: str | None = None  # why the part cannot be stored as an event (quarantined)


# -- splitting (hot path) -------------------------------------------------------------------


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
            yield _malformed(entry, "an entry has no 'changes' array")
            continue
        for change in entry["changes"]:
            if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
                yield _malformed(change, "a change has no 'value' object", entry)
                continue
            yield from _split_change(entry, change)


def _waba_id(entry: dict[str, Any] | None) -> str | None:
    """The entry's WhatsApp Business Account id (``entry.id``), as text."""
    waba = entry.get("id") if entry is not None else None
    return str(waba) if isinstance(waba, str | int) else None


def _malformed(part: Any, problem: str, entry: dict[str, Any] | None = None) -> WebhookEvent:
    return WebhookEvent(
        None, "malformed", None, {"part": part}, waba_id=_waba_id(entry), problem=problem
    )


def _contact_for(msg: dict[str, Any], contacts: list[Any]) -> Any:
    """The ``contacts[]`` entry of the message's sender: by ``wa_id``, else by BSUID (users
    with a username may have no phone), else the only one. None when there is none."""
    if len(contacts) == 1:
        return contacts[0]
    sender, sender_uid = msg.get("from"), msg.get("from_user_id")
    for contact in contacts:
        if isinstance(contact, dict) and (
            (sender is not None and contact.get("wa_id") == sender)
            or (sender_uid is not None and contact.get("user_id") == sender_uid)
        ):
            return contact
    return None


def _split_change(entry: dict[str, Any], change: dict[str, Any]) -> Iterator[WebhookEvent]:
    value: dict[str, Any] = change["value"]
    field = str(change.get("field") or "messages")
    metadata = _obj(value.get("metadata"))
    pnid = metadata.get("phone_number_id")
    phone_number_id = str(pnid) if pnid is not None else None
    waba_id = _waba_id(entry)
    if field != "messages":
        # Account updates, template and quality changes: kept, keyed by their content and
        # the entry's time, so the same change made again later (a template paused, then
        # approved, then paused again) is a new event, and a re-delivery is not.
        yield WebhookEvent(
            phone_number_id,
            f"field:{field}",
            _digest({"time": entry.get("time"), "change": change}),
            {"waba_id": entry.get("id"), "time": entry.get("time"), "field": field, "value": value},
            waba_id=waba_id,
        )
        return
    contacts = _arr(value.get("contacts"))
    for msg in _arr(value.get("messages")):
        if not isinstance(msg, dict):
            continue
        msg_id = msg.get("id")
        yield WebhookEvent(
            phone_number_id,
            "message",
            str(msg_id) if msg_id else None,
            {
                "metadata": metadata,
                "contact": _contact_for(msg, contacts),
                "message": msg,
                "waba_id": waba_id,  # so the processor learns which account the WABA is
            },
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
    errors = _arr(value.get("errors"))
    if errors:
        # The same error (e.g. 131000) for two different messages is two events: the ids of
        # the messages beside it are part of its key, and kept with it.
        beside = [m.get("id") for m in _arr(value.get("messages")) if isinstance(m, dict)]
        for error in errors:
            yield WebhookEvent(
                phone_number_id,
                "error",
                _digest({"error": error, "messages": beside, "time": entry.get("time")}),
                {"metadata": metadata, "error": error, "message_ids": beside},
                waba_id=waba_id,
            )


# -- parsing (in the processor) -------------------------------------------------------------


def _str(value: Any) -> str | None:
    """A string field: numbers are accepted as text (ids sometimes arrive as numbers)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _int(value: Any) -> int | None:
    try:
        return int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _timestamp(raw: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(raw), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return datetime.now(UTC)


def parse_error(raw: Any) -> ErrorInfo:
    """One ``errors[]`` element; ``details`` is ``error_data.details``."""
    error = _obj(raw)
    return ErrorInfo(
        code=_int(error.get("code")),
        title=_str(error.get("title")),
        message=_str(error.get("message")),
        details=_str(_obj(error.get("error_data")).get("details")),
        href=_str(error.get("href")),
    )


def _errors(raw: Any) -> tuple[tuple[dict[str, Any], ...], tuple[ErrorInfo, ...]]:
    kept = tuple(e for e in _arr(raw) if isinstance(e, dict))
    return kept, tuple(parse_error(e) for e in kept)


def _media(body: dict[str, Any]) -> MediaRef:
    return MediaRef(
        id=_str(body.get("id")),
        mime_type=_str(body.get("mime_type")),
        sha256=_str(body.get("sha256")),
        url=_str(body.get("url")),
        caption=_str(body.get("caption")),
        filename=_str(body.get("filename")),
    )


def _location(body: dict[str, Any]) -> Location | None:
    lat, lon = _float(body.get("latitude")), _float(body.get("longitude"))
    if lat is None or lon is None:
        return None
    return Location(lat, lon, _str(body.get("name")), _str(body.get("address")))


def _context(raw: Any) -> MessageContext | None:
    if not isinstance(raw, dict):
        return None
    product = _obj(raw.get("referred_product"))
    return MessageContext(
        message_id=_str(raw.get("id")),
        from_id=_str(raw.get("from")),
        forwarded=raw.get("forwarded") is True,
        frequently_forwarded=raw.get("frequently_forwarded") is True,
        referred_product_id=_str(product.get("product_retailer_id")),
        catalog_id=_str(product.get("catalog_id")),
    )


_REFERRAL_FIELDS = tuple(f.name for f in fields(Referral))  # Meta's names, one for one


def _referral(raw: Any) -> Referral | None:
    if not isinstance(raw, dict):
        return None
    return Referral(**{name: _str(raw.get(name)) for name in _REFERRAL_FIELDS})


def _choice(mtype: MessageType, body: dict[str, Any]) -> ChoiceReply | None:
    if mtype is MessageType.BUTTON:  # a template's quick-reply button
        return ChoiceReply("button", _str(body.get("payload")), _str(body.get("text")))
    if mtype is not MessageType.INTERACTIVE:
        return None
    kind = _str(body.get("type")) or "unknown"
    reply = _obj(body.get(kind))
    if kind == "nfm_reply":
        return ChoiceReply(
            kind, None, _str(reply.get("name")), _str(reply.get("body")),
            _str(reply.get("response_json")),
        )  # fmt: skip
    return ChoiceReply(
        kind, _str(reply.get("id")), _str(reply.get("title")), _str(reply.get("description"))
    )


def _shared_contact(raw: Any) -> SharedContact:
    card = _obj(raw)
    phones = [_obj(p) for p in _arr(card.get("phones"))]
    return SharedContact(
        formatted_name=_str(_obj(card.get("name")).get("formatted_name")),
        phones=tuple(p for p in (_str(x.get("phone")) for x in phones) if p),
        wa_ids=tuple(w for w in (_str(x.get("wa_id")) for x in phones) if w),
        emails=tuple(
            e for e in (_str(_obj(x).get("email")) for x in _arr(card.get("emails"))) if e
        ),
        organization=_str(_obj(card.get("org")).get("company")),
    )


def _order(body: dict[str, Any]) -> Order:
    items = tuple(
        OrderItem(
            product_retailer_id=_str(item.get("product_retailer_id")),
            quantity=_int(item.get("quantity")),
            item_price=_float(item.get("item_price")),
            currency=_str(item.get("currency")),
        )
        for item in map(_obj, _arr(body.get("product_items")))
    )
    return Order(_str(body.get("catalog_id")), _str(body.get("text")), items)


def _system(body: dict[str, Any]) -> SystemChange:
    return SystemChange(
        type=_str(body.get("type")) or "unknown",
        body=_str(body.get("body")),
        new_wa_id=_str(body.get("new_wa_id") or body.get("wa_id")),
        new_user_id=_str(body.get("new_user_id") or body.get("user_id")),
    )


def _text_of(mtype: MessageType, body: dict[str, Any], choice: ChoiceReply | None) -> str | None:
    """The human-readable text of a message: what keyword rules and tickets read."""
    if mtype is MessageType.TEXT:
        return _str(body.get("body")) or ""
    if mtype in (MessageType.IMAGE, MessageType.DOCUMENT, MessageType.VIDEO):
        return _str(body.get("caption"))
    if choice is not None:
        if choice.kind == "nfm_reply":
            return choice.description
        return choice.title or choice.id
    if mtype is MessageType.REACTION:
        return _str(body.get("emoji"))
    if mtype is MessageType.LOCATION:
        parts = [_str(body.get("name")), _str(body.get("address"))]
        return ", ".join(p for p in parts if p) or None
    if mtype in (MessageType.SYSTEM, MessageType.ORDER):
        return _str(body.get("body" if mtype is MessageType.SYSTEM else "text"))
    return None


def parse_message(payload: dict[str, Any]) -> InboundMessage:
    """Parse one stored ``message`` event (its ``id`` is required; nothing else is)."""
    msg: dict[str, Any] = payload["message"]
    contact = _obj(payload.get("contact"))
    metadata = _obj(payload.get("metadata"))
    raw_type = _str(msg.get("type")) or "unknown"
    mtype = MessageType.parse(raw_type)
    body = _obj(msg.get(raw_type))
    choice = _choice(mtype, body)
    raw_errors, error_details = _errors(msg.get("errors"))
    raw_referral = msg.get("referral")
    return InboundMessage(
        provider=PROVIDER,
        provider_message_id=str(msg["id"]),
        phone_number_id=str(metadata.get("phone_number_id") or ""),
        from_wa_id=_str(msg.get("from")) or _str(contact.get("wa_id")),
        from_user_id=_str(msg.get("from_user_id")) or _str(contact.get("user_id")),
        profile_name=_str(_obj(contact.get("profile")).get("name")),
        timestamp=_timestamp(msg.get("timestamp")),
        type=mtype,
        raw_type=raw_type,
        text=_text_of(mtype, body, choice),
        media=_media(body) if mtype in MEDIA_TYPES else None,
        location=_location(body) if mtype is MessageType.LOCATION else None,
        context_message_id=_str(_obj(msg.get("context")).get("id")),
        referral=raw_referral if isinstance(raw_referral, dict) else None,
        errors=raw_errors,
        context=_context(msg.get("context")),
        ad_referral=_referral(raw_referral),
        error_details=error_details,
        reaction=(
            Reaction(_str(body.get("message_id")), _str(body.get("emoji")) or None)
            if mtype is MessageType.REACTION
            else None
        ),
        choice=choice,
        shared_contacts=(
            tuple(_shared_contact(c) for c in _arr(msg.get("contacts")))
            if mtype is MessageType.CONTACTS
            else ()
        ),
        order=_order(body) if mtype is MessageType.ORDER else None,
        system=_system(body) if mtype is MessageType.SYSTEM else None,
        identity_key_hash=_str(contact.get("identity_key_hash")),
    )


def parse_status(payload: dict[str, Any]) -> StatusUpdate:
    """Parse one stored ``status`` event; ``errors[]`` keep their codes."""
    status: dict[str, Any] = payload["status"]
    metadata = _obj(payload.get("metadata"))
    raw = _str(status.get("status")) or "unknown"
    raw_errors, error_details = _errors(status.get("errors"))
    pricing = status.get("pricing")
    return StatusUpdate(
        provider=PROVIDER,
        provider_message_id=str(status["id"]),
        phone_number_id=str(metadata.get("phone_number_id") or ""),
        recipient_id=_str(status.get("recipient_id")),
        status=DeliveryStatus.parse(raw),
        raw_status=raw,
        timestamp=_timestamp(status.get("timestamp")),
        errors=raw_errors,
        pricing=pricing if isinstance(pricing, dict) else None,
        recipient_user_id=_str(status.get("recipient_user_id")),
        error_details=error_details,
        biz_opaque_callback_data=_str(status.get("biz_opaque_callback_data")),
        conversation_id=_str(_obj(status.get("conversation")).get("id")),
    )
