"""One inbound WhatsApp message into the store: contact mirror, message, ticket and the CRM
changes they cause (the contact's fields, the ticket, the message's activity on the contact),
all in the caller's transaction. What rules then do with the message
(replies, tags, priority) is the rules runtime's part; the inbox processor calls it next, in
the same transaction.

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
from sqlalchemy import Connection, Integer, Row, Select, bindparam, select

from wacrm.model import InboundMessage, MessageType
from wacrm.phone import PhoneError, normalize_wa_id
from wacrm.store.keys import contact_record_key, ticket_record_key
from wacrm.store.outbox import enqueue_crm_change
from wacrm.store.schema import contacts, messages, tickets
from wacrm.store.unique import insert_new
from wacrm.workers.message_activity import enqueue_activity, inbound_activity

logger = logging.getLogger(__name__)

# Not a person waiting for an answer: stored and mirrored, but no ticket or unread.
_NO_AGENT_TYPES = frozenset({MessageType.REACTION, MessageType.SYSTEM})
_SUBJECT_CHARS = 120
_TYPE_CHARS = 32  # messages.type
_ERROR_CODE_CHARS = 32  # messages.error_code


class UnusableMessage(ValueError):
    """The message cannot be attributed to anyone; the processor quarantines it."""


@dataclass(frozen=True, slots=True)
class MessageOutcome:
    contact_id: int
    message_id: int | None  # None: the provider id was already stored (a duplicate)
    ticket_id: int | None = None  # set when this message opened a ticket
    # The contact's row as this transaction left it (locked), for the rules that run next.
    contact: Row[Any] | None = None
    # The contact was created by this message (so it is the only one it has sent).
    new_contact: bool = False


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


def handle_message(
    conn: Connection,
    *,
    account_id: int,
    message: InboundMessage,
    raw: dict[str, Any],
    now: datetime,
    message_activity: bool = True,
) -> MessageOutcome:
    """Store ``message`` (``raw`` is its ``messages[]`` element) and everything it causes.

    ``message_activity``: also queue the message's CRM activity (``WACRM_CRM_MESSAGE_ACTIVITY``).
    """
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
    if contact_key is None:  # checked above; a contact row always has one or the other
        raise UnusableMessage("contact has neither a phone number nor a WhatsApp user id")
    subject = _subject(message, contact)
    ticket_id = (
        _open_ticket(conn, account_id, contact.id, message, subject, now) if needs_agent else None
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
            new_record=True,  # this message opened it
        )
    if message_activity:
        # Not urgent: it waits for the baseline or a full batch, behind any ticket.
        enqueue_activity(
            conn,
            account_id=account_id,
            provider_message_id=message.provider_message_id,
            contact_key=contact_key,
            properties=inbound_activity(message),
            now=now,
            new_record=True,  # the message row was new, so is its activity
        )
    return MessageOutcome(contact.id, message_id, ticket_id, contact, new_contact=created)


def _find_contact(
    conn: Connection, account_id: int, phone: str | None, user_id: str | None
) -> Row[Any] | None:
    for query, value in ((_BY_PHONE, phone), (_BY_USER_ID, user_id)):
        if value:
            row = conn.execute(query, {"account": account_id, "value": value}).first()
            if row is not None:
                return row
    return None


def _contact_by(column: str) -> Select[Any]:
    return (
        select(contacts)
        .where(
            contacts.c.account_id == bindparam("account"), contacts.c[column] == bindparam("value")
        )
        .with_for_update()
    )


# Built once: they run for every message.
_BY_PHONE, _BY_USER_ID = _contact_by("phone"), _contact_by("user_id")


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
    new_id = insert_new(
        conn,
        contacts,
        {
            "account_id": account_id,
            "phone": phone,
            "user_id": user_id,
            "wa_id": message.from_wa_id,
            "name": message.profile_name,
            "unread_count": 0,
            "tags": "[]",
            "created_at": now,
            "updated_at": now,
        },
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
    return insert_new(
        conn,
        messages,
        {
            "account_id": account_id,
            "contact_id": contact_id,
            "direction": "in",
            "provider": message.provider,
            "provider_message_id": message.provider_message_id,
            "type": message.raw_type[:_TYPE_CHARS],
            "text": message.text,
            "payload": orjson.dumps(raw).decode(),
            "status": "received",
            "status_at": message.timestamp,
            "error_code": None if code is None else str(code)[:_ERROR_CODE_CHARS],
            "error_title": error.get("title") or error.get("message"),
            "created_at": now,
        },
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
    # Every column is set (unchanged ones to the locked row's value): one statement, built
    # once, whatever changed.
    values: dict[str, Any] = {
        "contact": contact.id,
        "interaction": max(filter(None, (contact.last_interaction_at, ts))),
        "at": now,
        "new_wa_id": message.from_wa_id or contact.wa_id,
        "new_name": message.profile_name or contact.name,
        "inbound": contact.last_inbound_at,
        "unread": 1 if needs_agent else 0,
        "new_phone": contact.phone,
        "new_user_id": contact.user_id,
    }
    if message.type is not MessageType.SYSTEM:  # a number change is not the user writing
        values["inbound"] = max(filter(None, (contact.last_inbound_at, ts)))
    # Fill in an identity the contact did not have yet (a username user revealing a phone,
    # a pre-BSUID contact getting its user id), never taking one another contact holds.
    if (
        phone
        and contact.phone is None
        and _find_contact(conn, contact.account_id, phone, None) is None
    ):
        values["new_phone"] = phone
    if (
        user_id
        and contact.user_id is None
        and _find_contact(conn, contact.account_id, None, user_id) is None
    ):
        values["new_user_id"] = user_id
    return conn.execute(_UPDATE_CONTACT, values).one()


_UPDATE_CONTACT = (
    contacts.update()
    .where(contacts.c.id == bindparam("contact"))
    .values(
        last_interaction_at=bindparam("interaction"),
        updated_at=bindparam("at"),
        wa_id=bindparam("new_wa_id"),
        name=bindparam("new_name"),
        last_inbound_at=bindparam("inbound"),
        unread_count=contacts.c.unread_count + bindparam("unread", type_=Integer()),
        phone=bindparam("new_phone"),
        user_id=bindparam("new_user_id"),
    )
    .returning(contacts)
)


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
    return insert_new(
        conn,
        tickets,
        {
            "account_id": account_id,
            "contact_id": contact_id,
            "subject": subject,
            "status": "open",
            "source_message_id": message.provider_message_id,
            "created_at": now,
        },
    )


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
