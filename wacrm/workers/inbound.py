"""One inbound WhatsApp message into the store: contact mirror, message, ticket, auto-reply
and the CRM changes they cause, all in the caller's transaction.

A message already stored (a duplicate delivery) changes nothing: the message row is unique
per provider id, and everything else happens only when that insert did. Races between
processors are settled by unique keys too (INSERT ... ON CONFLICT DO NOTHING), not by
check-then-insert.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Row, Table, select
from sqlalchemy.dialects import postgresql, sqlite

from wacrm.model import InboundMessage, MessageType
from wacrm.phone import PhoneError, normalize_wa_id
from wacrm.rules.auto_reply import AutoReplies, Reply
from wacrm.store.outbox import enqueue_crm_change
from wacrm.store.schema import contacts, messages, tickets
from wacrm.whatsapp.meta_bodies import text_message
from wacrm.workers.whatsapp_queue import enqueue_send

logger = logging.getLogger(__name__)

# Not a person waiting for an answer: stored and mirrored, but no ticket, reply or unread.
_NO_AGENT_TYPES = frozenset({MessageType.REACTION, MessageType.SYSTEM})
_SUBJECT_CHARS = 120
_TYPE_CHARS = 32  # messages.type
_ERROR_CODE_CHARS = 32  # messages.error_code
_USER_KEY_PREFIX = "user:"
_TICKET_KEY_PREFIX = "wa:"


class UnusableMessage(ValueError):
    """The message cannot be attributed to anyone; the processor quarantines it."""


@dataclass(frozen=True, slots=True)
class MessageOutcome:
    contact_id: int
    message_id: int | None  # None: the provider id was already stored (a duplicate)
    ticket_id: int | None = None  # set when this message opened a ticket
    reply_message_id: int | None = None


def contact_record_key(phone: str | None, user_id: str | None) -> str:
    """The CRM idempotency key of a contact: its E.164 phone, else its WhatsApp user id."""
    if phone:
        return phone
    if user_id:
        return _USER_KEY_PREFIX + user_id
    raise UnusableMessage("contact has neither a phone number nor a WhatsApp user id")


def ticket_record_key(provider_message_id: str) -> str:
    return _TICKET_KEY_PREFIX + provider_message_id


def sender_phone(wa_id: str | None) -> str | None:
    """E.164 for a sender's wa_id, or None when it is withheld or not a number.

    WhatsApp vouches that a wa_id is a real number, so one our phone metadata does not know
    yet (a new number range) is kept as ``+digits`` rather than losing the phone.
    """
    if not wa_id:
        return None
    try:
        return normalize_wa_id(wa_id)
    except PhoneError as exc:
        if wa_id.isascii() and wa_id.isdigit() and 7 <= len(wa_id) <= 15:
            logger.info("wa_id kept as +digits although %s", exc.reason)
            return "+" + wa_id
        return None


def _insert_new(conn: Connection, table: Table, **values: Any) -> int | None:
    """INSERT the row unless a unique key already holds one (the same statement on both
    backends); the new id, or None."""
    if conn.dialect.name == "postgresql":
        insert: postgresql.Insert | sqlite.Insert = postgresql.insert(table)
    else:
        insert = sqlite.insert(table)
    statement = insert.values(**values).on_conflict_do_nothing().returning(table.c.id)
    new_id = conn.execute(statement).scalar()
    return None if new_id is None else int(new_id)


def handle_message(
    conn: Connection,
    *,
    account_id: int,
    message: InboundMessage,
    raw: dict[str, Any],
    replies: AutoReplies,
    now: datetime,
    default_phone_number_id: str = "",
) -> MessageOutcome:
    """Store ``message`` (``raw`` is its ``messages[]`` element) and everything it causes."""
    phone = sender_phone(message.from_wa_id)
    user_id = message.from_user_id
    if phone is None and not user_id:
        raise UnusableMessage(
            f"sender has no usable phone (wa_id {message.from_wa_id!r}) and no user id"
        )
    contact, created = _lock_contact(conn, account_id, phone, user_id, message, now)
    # The CRM gets the profile name only when it is news, so a name an agent corrected in
    # the CRM is not overwritten by every message.
    name_is_news = created or (message.profile_name or contact.name) != contact.name
    message_id = _insert_inbound(conn, account_id, contact.id, message, raw, now)
    if message_id is None:
        return MessageOutcome(contact_id=contact.id, message_id=None)

    needs_agent = message.type not in _NO_AGENT_TYPES
    contact = _update_contact(conn, contact, phone, user_id, message, now, needs_agent)
    contact_key = contact_record_key(contact.phone, contact.user_id)
    subject = _subject(message, contact)
    ticket_id = (
        _open_ticket(conn, account_id, contact.id, message, subject, now) if needs_agent else None
    )

    reply_id = None
    if needs_agent:
        reply = replies.match(message, opened_ticket=ticket_id is not None, ticket_id=ticket_id)
        if reply is not None:
            pnid = message.phone_number_id or default_phone_number_id
            reply_id = _queue_reply(
                conn, account_id, contact, message_id, message, reply, pnid, now
            )

    enqueue_crm_change(
        conn,
        account_id=account_id,
        object="contacts",
        record_key=contact_key,
        properties=_contact_properties(contact, with_name=name_is_news),
        # A new ticket is urgent and is linked to this contact, so the contact goes first.
        urgent=ticket_id is not None,
        now=now,
    )
    if ticket_id is not None:
        enqueue_crm_change(
            conn,
            account_id=account_id,
            object="tickets",
            record_key=ticket_record_key(message.provider_message_id),
            operation="create",
            properties={
                "subject": subject,
                "status": "open",
                "source_message_id": message.provider_message_id,
                "opened_at": message.timestamp.isoformat(),
            },
            contact_key=contact_key,
            urgent=True,
            now=now,
        )
    return MessageOutcome(contact.id, message_id, ticket_id, reply_id)


def _find_contact(
    conn: Connection, account_id: int, phone: str | None, user_id: str | None
) -> Row[Any] | None:
    for column, value in (("phone", phone), ("user_id", user_id)):
        if value:
            row = conn.execute(
                select(contacts)
                .where(contacts.c.account_id == account_id, contacts.c[column] == value)
                .with_for_update()
            ).first()
            if row is not None:
                return row
    return None


def _lock_contact(
    conn: Connection,
    account_id: int,
    phone: str | None,
    user_id: str | None,
    message: InboundMessage,
    now: datetime,
) -> tuple[Row[Any], bool]:
    """The contact for this sender (and whether it is new), locked until commit.

    INSERT ... ON CONFLICT DO NOTHING, then read: two workers meeting a new contact at once
    both end up with the one row instead of one of them failing on the unique key.
    """
    found = _find_contact(conn, account_id, phone, user_id)
    if found is not None:
        return found, False
    new_id = _insert_new(
        conn,
        contacts,
        account_id=account_id,
        phone=phone,
        user_id=user_id,
        wa_id=message.from_wa_id,
        name=message.profile_name,
        unread_count=0,
        tags="[]",
        created_at=now,
        updated_at=now,
    )
    found = _find_contact(conn, account_id, phone, user_id)
    assert found is not None, "contact vanished between insert and select"
    return found, new_id is not None


def _insert_inbound(
    conn: Connection,
    account_id: int,
    contact_id: int,
    message: InboundMessage,
    raw: dict[str, Any],
    now: datetime,
) -> int | None:
    error = message.errors[0] if message.errors else {}
    code = error.get("code")
    return _insert_new(
        conn,
        messages,
        account_id=account_id,
        contact_id=contact_id,
        direction="in",
        provider=message.provider,
        provider_message_id=message.provider_message_id,
        type=message.raw_type[:_TYPE_CHARS],
        text=message.text,
        payload=orjson.dumps(raw).decode(),
        status="received",
        status_at=message.timestamp,
        error_code=None if code is None else str(code)[:_ERROR_CODE_CHARS],
        error_title=error.get("title") or error.get("message"),
        created_at=now,
    )


def _update_contact(
    conn: Connection,
    contact: Row[Any],
    phone: str | None,
    user_id: str | None,
    message: InboundMessage,
    now: datetime,
    needs_agent: bool,
) -> Row[Any]:
    ts = message.timestamp
    values: dict[str, Any] = {
        "last_interaction_at": max(filter(None, (contact.last_interaction_at, ts))),
        "updated_at": now,
    }
    if message.from_wa_id:
        values["wa_id"] = message.from_wa_id
    if message.profile_name:
        values["name"] = message.profile_name
    if message.type is not MessageType.SYSTEM:  # a number change is not the user writing
        values["last_inbound_at"] = max(filter(None, (contact.last_inbound_at, ts)))
    if needs_agent:
        values["unread_count"] = contacts.c.unread_count + 1
    # Fill in an identity the contact did not have yet (a username user revealing a phone,
    # a pre-BSUID contact getting its user id), never taking one another contact holds.
    if (
        phone
        and contact.phone is None
        and _find_contact(conn, contact.account_id, phone, None) is None
    ):
        values["phone"] = phone
    if (
        user_id
        and contact.user_id is None
        and _find_contact(conn, contact.account_id, None, user_id) is None
    ):
        values["user_id"] = user_id
    updated = conn.execute(
        contacts.update().where(contacts.c.id == contact.id).values(**values).returning(contacts)
    ).one()
    return updated


def _open_ticket(
    conn: Connection,
    account_id: int,
    contact_id: int,
    message: InboundMessage,
    subject: str,
    now: datetime,
) -> int | None:
    """Open a ticket unless the contact has one open; its id when this message opened it."""
    # uq_tickets_one_open decides: with a ticket already open, this inserts nothing.
    return _insert_new(
        conn,
        tickets,
        account_id=account_id,
        contact_id=contact_id,
        subject=subject,
        status="open",
        source_message_id=message.provider_message_id,
        created_at=now,
    )


def _queue_reply(
    conn: Connection,
    account_id: int,
    contact: Row[Any],
    in_reply_to: int,
    message: InboundMessage,
    reply: Reply,
    phone_number_id: str,
    now: datetime,
) -> int | None:
    if not contact.phone or not phone_number_id:
        # Sending to a user id alone is not supported yet; the ticket still reaches an agent.
        logger.warning(
            "auto-reply %r not sent for message %s: no %s",
            reply.rule,
            message.provider_message_id,
            "recipient phone" if not contact.phone else "business phone_number_id",
        )
        return None
    try:
        body = text_message(contact.phone, reply.text, reply_to=message.provider_message_id)
    except ValueError as exc:  # the reply, not the inbound message, is at fault: keep the latter
        logger.warning("auto-reply %r not sent: %s", reply.rule, exc)
        return None
    message_id, _outbox_id = enqueue_send(
        conn,
        account_id=account_id,
        phone_number_id=phone_number_id,
        body=body,
        contact_id=contact.id,
        text=reply.text,
        rule=reply.rule,
        in_reply_to=in_reply_to,
        now=now,
    )
    return message_id


def _subject(message: InboundMessage, contact: Row[Any]) -> str:
    text = (message.text or "").strip().splitlines()
    if text and text[0].strip():
        first = text[0].strip()
        return first if len(first) <= _SUBJECT_CHARS else first[: _SUBJECT_CHARS - 1] + "…"
    who = contact.name or contact.phone or contact.user_id
    return f"WhatsApp {message.raw_type} from {who}"


def _contact_properties(contact: Row[Any], *, with_name: bool) -> dict[str, Any]:
    """The contact's WhatsApp-side fields, by standard name, for the CRM upsert."""
    props: dict[str, Any] = {"unread_count": contact.unread_count}
    for name in ("phone", "wa_id", "user_id"):
        if getattr(contact, name):
            props[name] = getattr(contact, name)
    if with_name and contact.name:
        props["name"] = contact.name
    for name in ("last_interaction_at", "last_inbound_at"):
        when: datetime | None = getattr(contact, name)
        if when is not None:
            props[name] = when.isoformat()
    return props
