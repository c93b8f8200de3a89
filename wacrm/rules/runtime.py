"""Running rules against the store: one call per event, inside the caller's transaction.

This is what the inbox processor, the CRM sync and the timer call. Each call reads the
contact (locked), fills in its language if unknown, lets the pure engine plan, and applies
the plan; the firing records make a second call for the same event a no-op.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Row, bindparam, select

from wacrm.model import DeliveryStatus, FieldChange, InboundMessage, Priority, StatusUpdate
from wacrm.rules.actions import Sender, apply_actions
from wacrm.rules.engine import RuleEngine
from wacrm.rules.episodes import current_episode, recent_inbound_texts
from wacrm.rules.events import ContactView, FieldChangeEvent, MessageEvent, StatusEvent
from wacrm.rules.language import LanguageDetector
from wacrm.rules.plans import PlannedAction
from wacrm.rules.schema import RuleSet, UnreadAtLeast
from wacrm.store.keys import contact_record_key
from wacrm.store.outbox import enqueue_crm_change
from wacrm.store.schema import contacts, messages

logger = logging.getLogger(__name__)

# Built once: the contact is read for every event.
_CONTACT = select(contacts).where(
    contacts.c.id == bindparam("contact"), contacts.c.account_id == bindparam("account")
)
_CONTACT_LOCKED = _CONTACT.with_for_update()
_SET_LANGUAGE = (
    contacts.update()
    .where(contacts.c.id == bindparam("contact"), contacts.c.language.is_(None))
    .values(language=bindparam("found"), updated_at=bindparam("at"))
)


def load_contact_view(
    conn: Connection, account_id: int, contact_id: int, *, lock: bool = True
) -> ContactView | None:
    """The contact as rules see it, or None if it is not in this account."""
    found = read_contact(conn, account_id, contact_id, lock=lock)
    return None if found is None else found[1]


def read_contact(
    conn: Connection,
    account_id: int,
    contact_id: int,
    *,
    lock: bool = True,
    episode_from_unread: int = 0,
    row: Row[Any] | None = None,
) -> tuple[Row[Any], ContactView] | None:
    """The contact's row (for :func:`apply_actions`) and its view, or None.

    The open episode (``awaiting_since_id``, two more queries) is looked up only when the
    contact has at least ``episode_from_unread`` unread messages: only the unread trigger
    and the timer read it, and this runs on every inbound message. ``row``: the contact's
    current row, when the caller has just written (and locked) it in this transaction.
    """
    if row is None or row.id != contact_id or row.account_id != account_id:
        query = _CONTACT_LOCKED if lock else _CONTACT
        row = conn.execute(query, {"contact": contact_id, "account": account_id}).first()
    if row is None:
        return None
    wanted = int(row.unread_count or 0) >= episode_from_unread
    episode = current_episode(conn, account_id, contact_id) if wanted else None
    try:
        priority = Priority(row.priority) if row.priority else None
    except ValueError:  # a value the CRM allows and we do not know: treat as unset
        priority = None
    view = ContactView(
        id=int(row.id),
        phone=row.phone,
        wa_id=row.wa_id,
        user_id=row.user_id,
        name=row.name,
        language=row.language,
        order_status_code=row.order_status_code,
        priority=priority,
        unread_count=int(row.unread_count or 0),
        tags=frozenset(orjson.loads(row.tags or "[]")),
        last_inbound_at=row.last_inbound_at,
        last_outbound_at=row.last_outbound_at,
        awaiting_since_id=episode.message_id if episode else None,
    )
    return row, view


class RuleRuntime:
    """The engine plus what it needs from the installation, built once at start-up.

    ``values`` fills installation placeholders (``{"price_list": settings.price_list_text}``);
    ``detector`` (optional) guesses the language of contacts who have none.
    """

    def __init__(
        self,
        ruleset: RuleSet,
        *,
        values: Mapping[str, str] | None = None,
        detector: LanguageDetector | None = None,
    ) -> None:
        self.ruleset = ruleset
        self.engine = RuleEngine(ruleset, values)
        self.detector = detector
        counts = [
            r.trigger.count for r in ruleset.enabled() if isinstance(r.trigger, UnreadAtLeast)
        ]
        # Messages need the open episode only to key an unread rule's firing.
        self._episode_from_unread = min(counts, default=sys.maxsize)

    def on_message(
        self,
        conn: Connection,
        *,
        account_id: int,
        contact_id: int,
        message: InboundMessage,
        message_row_id: int | None,
        now: datetime,
        opened_ticket_id: int | None = None,
        contact_row: Row[Any] | None = None,
        new_contact: bool = False,
    ) -> list[PlannedAction]:
        """Rules for an inbound message already stored (``message_row_id``) on the contact;
        ``opened_ticket_id``: the ticket the message opened (``MessageOutcome.ticket_id``);
        ``contact_row``: the contact as the caller just wrote it in this transaction
        (``MessageOutcome.contact``), which saves reading it again; ``new_contact``: the
        message created the contact (``MessageOutcome.new_contact``), so it is the contact's
        only message and its language is told from this text alone, without a query."""
        found = read_contact(
            conn,
            account_id,
            contact_id,
            episode_from_unread=self._episode_from_unread,
            row=contact_row,
        )
        if found is None:
            return []
        row, view = found
        view = self._fill_language(conn, account_id, view, message.text, now, new_contact)
        event = MessageEvent(
            message_id=message.provider_message_id,
            type=message.type,
            text=message.text,
            at=message.timestamp,
            row_id=message_row_id,
            opened_ticket_id=opened_ticket_id,
        )
        planned = self.engine.evaluate(event, view, now)
        pnid = message.phone_number_id
        sender = Sender(pnid, message.provider) if pnid else None
        reply_to = (message_row_id, message.provider_message_id) if message_row_id else None
        return apply_actions(
            conn,
            account_id,
            contact_id,
            planned,
            now,
            sender=sender,
            reply_to=reply_to,
            contact_row=row,
        )

    def on_status(
        self, conn: Connection, *, account_id: int, status: StatusUpdate, now: datetime
    ) -> list[PlannedAction]:
        """Rules for a status webhook; only failures of messages we stored can fire."""
        if status.status is not DeliveryStatus.FAILED:
            return []
        row = conn.execute(
            select(messages.c.id, messages.c.contact_id).where(
                messages.c.account_id == account_id,
                messages.c.provider_message_id == status.provider_message_id,
            )
        ).first()
        if row is None or row.contact_id is None:
            return []
        error: Mapping[str, Any] = status.errors[0] if status.errors else {}
        code = error.get("code")
        return self.on_send_failed(
            conn,
            account_id=account_id,
            message_row_id=int(row.id),
            error_code=None if code is None else str(code),
            error_title=error.get("title") or error.get("message"),
            now=now,
            provider_message_id=status.provider_message_id,
        )

    def on_send_failed(
        self,
        conn: Connection,
        *,
        account_id: int,
        message_row_id: int,
        error_code: str | None,
        error_title: str | None,
        now: datetime,
        provider_message_id: str | None = None,
    ) -> list[PlannedAction]:
        """Rules for an outbound message that failed: a status webhook said so, or the
        outbox gave up before it left (no wamid then). Keyed by ``messages.id``, so the two
        paths for one message fire once."""
        contact_id = conn.execute(
            select(messages.c.contact_id).where(
                messages.c.id == message_row_id, messages.c.account_id == account_id
            )
        ).scalar()
        if contact_id is None:
            return []
        found = read_contact(conn, account_id, int(contact_id))
        if found is None:
            return []
        row, view = found
        event = StatusEvent(
            message_id=provider_message_id or f"#{message_row_id}",
            failed=True,
            at=now,
            error_code=error_code,
            error_title=error_title,
            row_id=message_row_id,
        )
        planned = self.engine.evaluate(event, view, now)
        return apply_actions(conn, account_id, int(contact_id), planned, now, contact_row=row)

    def on_field_change(
        self,
        conn: Connection,
        *,
        account_id: int,
        contact_id: int,
        change: FieldChange,
        old: Any,
        now: datetime,
        change_id: str | None = None,
    ) -> list[PlannedAction]:
        """Rules for a CRM-side change the contact mirror has just taken in."""
        found = read_contact(conn, account_id, contact_id)
        if found is None:
            return []
        row, view = found
        event = FieldChangeEvent(
            field=change.field,
            old=_as_text(old),
            new=_as_text(change.value),
            at=change.changed_at,
            change_id=change_id,
        )
        planned = self.engine.evaluate(event, view, now)
        return apply_actions(conn, account_id, contact_id, planned, now, contact_row=row)

    def _fill_language(
        self,
        conn: Connection,
        account_id: int,
        view: ContactView,
        text: str | None,
        now: datetime,
        only_message: bool = False,
    ) -> ContactView:
        """Detect and store the language of a contact who has none; tell the CRM, whose
        field is empty too (the mirror would hold its value otherwise). ``only_message``:
        ``text`` is the contact's only message, so its recent texts need no query."""
        if self.detector is None or view.language or view.id is None or not text:
            return view
        texts = [text] if only_message else recent_inbound_texts(conn, view.id) or [text]
        found = self.detector.detect(texts, view.phone)
        if found is None or not found.sure:
            return view  # the next messages add text to decide on
        conn.execute(_SET_LANGUAGE, {"contact": view.id, "found": found.language, "at": now})
        key = contact_record_key(view.phone, view.user_id)
        if key is not None:
            enqueue_crm_change(
                conn,
                account_id=account_id,
                object="contacts",
                record_key=key,
                properties={"language": found.language},
                now=now,
            )
        logger.debug("contact %s: language %s (%.2f)", view.id, found.language, found.confidence)
        return replace(view, language=found.language)


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(sorted(map(str, value)))
    return str(value)
