"""A WhatsApp message as a CRM activity on its contact (in HubSpot: a Communication).

One activity per message, in and out, keyed by ``msg:<provider message id>``
(:func:`wacrm.store.keys.message_record_key`). An inbound message's activity is queued with
the message (:func:`wacrm.workers.inbound.handle_message`); an outbound message's with its
first status, and each status that moves it forward updates the same activity
(:meth:`wacrm.workers.inbox.InboxProcessor._apply_status`). Every change carries the whole
activity, so whichever arrives first creates it complete, and the CRM outbox merges the
changes of one activity into one pending row: ten statuses before a flush are one write.

Activities are never urgent: they wait for the baseline interval or a full batch, and give
way to tickets (see :mod:`wacrm.workers.crm_outbox`). Properties use standard names; each
CRM's ``mappings/<crm>_messages.yaml`` says what the CRM calls them, and how long a body it
takes (a longer one is cut with a marker, never refused).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, select

from wacrm.model import MEDIA_TYPES, InboundMessage, MessageType
from wacrm.store.keys import contact_record_key, message_record_key
from wacrm.store.outbox import enqueue_crm_change
from wacrm.store.schema import contacts, messages

logger = logging.getLogger(__name__)

ACTIVITY_OBJECT = "messages"
INBOUND = "inbound"
OUTBOUND = "outbound"
RECEIVED = "received"

# How a message that is not plain text reads on the timeline: "[image] caption".
_LABELS = {
    MessageType.INTERACTIVE: "reply",
    MessageType.BUTTON: "button",
    MessageType.CONTACTS: "contact card",
    MessageType.REQUEST_WELCOME: "opened the chat",
    MessageType.TEMPLATE: "template",
}


def inbound_activity(message: InboundMessage) -> dict[str, Any]:
    """The activity of a message a customer sent."""
    return {
        "direction": INBOUND,
        "body": describe_inbound(message),
        "message_type": message.raw_type,
        "whatsapp_message_id": message.provider_message_id,
        "timestamp": _aware(message.timestamp).isoformat(),
        "status": RECEIVED,
    }


def describe_inbound(message: InboundMessage) -> str:
    """The text, or a short description of what was sent: "[image] caption",
    "[location] name, address (lat, lon)", "[reaction] 👍"…"""
    text = (message.text or "").strip()
    if message.type is MessageType.TEXT:
        return message.text or ""
    details = [text] if text else []
    if message.type in MEDIA_TYPES and message.media is not None and message.media.filename:
        details.insert(0, message.media.filename)
    if message.location is not None:
        details.append(f"({message.location.latitude}, {message.location.longitude})")
    if message.type is MessageType.CONTACTS:
        details = [c.formatted_name or ", ".join(c.phones) for c in message.shared_contacts]
    if message.type is MessageType.REACTION and message.reaction is not None:
        details = [message.reaction.emoji or "removed"]
    if message.order is not None:
        details.insert(0, f"{len(message.order.items)} item(s)")
    return _labelled(_LABELS.get(message.type, message.raw_type), details)


def describe_outbound(kind: str, text: str | None, body: dict[str, Any]) -> str:
    """The text of a message we sent, or a short description from its Cloud API body."""
    if kind == "text":
        return text or str(_part(body, "text").get("body") or "")
    part = _part(body, kind)
    details: list[str] = []
    if kind == "template":
        language = _part(part, "language").get("code")
        details.append(f"{part.get('name') or '?'}" + (f" ({language})" if language else ""))
    else:
        for key in ("filename", "caption", "name", "address", "emoji"):
            if isinstance(part.get(key), str) and part[key].strip():
                details.append(part[key].strip())
    if kind == "interactive":
        details.append(str(_part(part, "body").get("text") or ""))
    if text and text.strip() and text.strip() not in details:
        details.append(text.strip())
    return _labelled(_LABELS.get(MessageType.parse(kind), kind), details)


def enqueue_activity(
    conn: Connection,
    *,
    account_id: int,
    provider_message_id: str,
    contact_key: str,
    properties: dict[str, Any],
    now: datetime,
    new_record: bool = False,
) -> int:
    """Queue (or merge into the pending change of) one message's activity; not urgent.
    ``new_record``: the message is new (see :func:`enqueue_crm_change`)."""
    return enqueue_crm_change(
        conn,
        account_id=account_id,
        object=ACTIVITY_OBJECT,
        record_key=message_record_key(provider_message_id),
        properties=properties,
        contact_key=contact_key,
        urgent=False,
        now=now,
        new_record=new_record,
    )


# Built once: it runs for every status that moves a message forward.
_OUTBOUND = (
    select(
        messages.c.provider_message_id,
        messages.c.type,
        messages.c.text,
        messages.c.payload,
        messages.c.status,
        messages.c.error_code,
        messages.c.error_title,
        messages.c.created_at,
        messages.c.sent_at,
        contacts.c.phone,
        contacts.c.user_id,
    )
    .select_from(messages.join(contacts, contacts.c.id == messages.c.contact_id))
    .where(messages.c.id == bindparam("message_id"))
)


def queue_outbound_activity(
    conn: Connection, *, account_id: int, message_id: int, now: datetime
) -> bool:
    """Queue the activity of the outbound message ``message_id`` as it now stands (call it
    after its status was written); False when it has no contact to belong to."""
    row = conn.execute(_OUTBOUND, {"message_id": message_id}).first()
    contact_key = None if row is None else contact_record_key(row.phone, row.user_id)
    if row is None or contact_key is None or not row.provider_message_id:
        logger.debug("outbound message %s has no contact: no CRM activity", message_id)
        return False
    properties: dict[str, Any] = {
        "direction": OUTBOUND,
        "body": describe_outbound(row.type, row.text, _body(row.payload)),
        "message_type": row.type,
        "whatsapp_message_id": row.provider_message_id,
        "timestamp": _aware(row.sent_at or row.created_at).isoformat(),
        "status": row.status,
        # Set on failure, cleared otherwise: a merged change never keeps a stale code.
        "error_code": row.error_code,
        "error_title": row.error_title,
    }
    enqueue_activity(
        conn,
        account_id=account_id,
        provider_message_id=row.provider_message_id,
        contact_key=contact_key,
        properties=properties,
        now=now,
    )
    return True


def _labelled(label: str, details: list[str]) -> str:
    shown = " ".join(d for d in details if d)
    return f"[{label}] {shown}" if shown else f"[{label}]"


def _part(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    return value if isinstance(value, dict) else {}


def _body(payload: str | None) -> dict[str, Any]:
    try:
        body = orjson.loads(payload or "{}")
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
