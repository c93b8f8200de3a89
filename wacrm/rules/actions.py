"""Carrying out planned actions, inside the caller's transaction.

Each (rule, firing key) group is claimed in ``rule_firings`` first; a group claimed before is
skipped whole. Everything else is a row in the store that some other part sends on: contact
tags and priority (plus one coalesced CRM change), tickets and tasks (plus their CRM
creates, keyed for idempotency), replies (a ``messages`` row and a ``wa_outbox`` row with the
Cloud API body, and the template to fall back to if the 24 h window closes), and events for
REST-hook subscribers (``rule_events``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from typing import Any

import orjson
from sqlalchemy import Connection, Row, bindparam, select

from wacrm.rules.firings import claim_firing
from wacrm.rules.plans import (
    EventEmit,
    PlannedAction,
    PriorityChange,
    ReplySend,
    Skipped,
    TagsChange,
    TaskCreate,
    TicketOpen,
)
from wacrm.store.keys import contact_record_key
from wacrm.store.outbox import enqueue_crm_change
from wacrm.store.schema import contacts, rule_events, tasks, tickets, whatsapp_numbers
from wacrm.store.unique import insert_new

# The outbox's own insert, so rule replies get what every send gets (template fallback for
# a closed window, pacing, retries).
from wacrm.store.whatsapp_outbox import enqueue_send

logger = logging.getLogger(__name__)

_RULE_KEY_PREFIX = "rule:"
_SUBJECT_CHARS = 255


class ActionError(RuntimeError):
    """The actions cannot be applied (e.g. the contact is not in the store)."""


@dataclass(frozen=True, slots=True)
class Sender:
    """The business number a reply leaves from."""

    phone_number_id: str
    provider: str = "meta"


def default_sender(conn: Connection, account_id: int) -> Sender | None:
    """The account's business number (the first registered), for replies not answering
    an inbound message (timer and CRM-change rules)."""
    row = conn.execute(
        select(whatsapp_numbers.c.phone_number_id, whatsapp_numbers.c.provider)
        .where(whatsapp_numbers.c.account_id == account_id)
        .order_by(whatsapp_numbers.c.phone_number_id)
        .limit(1)
    ).first()
    return None if row is None else Sender(row.phone_number_id, row.provider)


def apply_actions(
    conn: Connection,
    account_id: int,
    contact_id: int,
    actions: Sequence[PlannedAction],
    now: datetime,
    *,
    sender: Sender | None = None,
    reply_to: tuple[int, str] | None = None,
    contact_row: Row[Any] | None = None,
) -> list[PlannedAction]:
    """Do ``actions`` for one contact; returns those done (groups fired before are left out).

    ``reply_to`` is the inbound message being answered, as (messages.id, provider id): replies
    quote it and point at it. Without ``sender``, replies leave from the account's number.
    ``contact_row``: the contact's row, when the caller already read it (locked) in this
    transaction.
    """
    if not actions:
        return []
    contact = (
        contact_row
        or conn.execute(
            select(contacts)
            .where(contacts.c.id == contact_id, contacts.c.account_id == account_id)
            .with_for_update()
        ).first()
    )
    if contact is None:
        raise ActionError(f"contact {contact_id} of account {account_id} is not in the store")
    state = _ContactState(contact)
    done: list[PlannedAction] = []
    for (rule, key), group in groupby(actions, key=lambda a: (a.rule, a.firing_key)):
        items = list(group)
        claimed = claim_firing(
            conn,
            account_id=account_id,
            rule=rule,
            firing_key=key,
            now=now,
            contact_id=contact_id,
            message_id=items[0].message_row_id,
        )
        if not claimed:
            continue
        for item in items:
            outcome = _apply_one(conn, account_id, state, item, now, sender, reply_to)
            done.append(outcome)
    state.flush(conn, account_id, now)
    return done


_SET_TAGS_PRIORITY = (
    contacts.update()
    .where(contacts.c.id == bindparam("contact"))
    .values(
        tags=bindparam("new_tags"), priority=bindparam("new_priority"), updated_at=bindparam("at")
    )
)


class _ContactState:
    """Tags and priority as actions change them; written once at the end."""

    def __init__(self, row: Row[Any]) -> None:
        self.row = row
        self.tags: set[str] = set(orjson.loads(row.tags or "[]"))
        self.priority: str | None = row.priority
        self._original = (frozenset(self.tags), self.priority)
        self.key = contact_record_key(row.phone, row.user_id)

    def flush(self, conn: Connection, account_id: int, now: datetime) -> None:
        changed: dict[str, Any] = {}
        if frozenset(self.tags) != self._original[0]:
            changed["tags"] = sorted(self.tags)
        if self.priority != self._original[1]:
            changed["priority"] = self.priority
        if not changed:
            return
        # Both columns, changed or not (the row is locked): one statement, built once.
        conn.execute(
            _SET_TAGS_PRIORITY,
            {
                "contact": self.row.id,
                "new_tags": orjson.dumps(sorted(self.tags)).decode(),
                "new_priority": self.priority,
                "at": now,
            },
        )
        if self.key is not None:
            enqueue_crm_change(
                conn,
                account_id=account_id,
                object="contacts",
                record_key=self.key,
                properties=changed,
                # A priority raised to high is what an agent should see first.
                urgent=changed.get("priority") == "high",
                now=now,
            )


def _apply_one(
    conn: Connection,
    account_id: int,
    state: _ContactState,
    item: PlannedAction,
    now: datetime,
    sender: Sender | None,
    reply_to: tuple[int, str] | None,
) -> PlannedAction:
    effect = item.effect
    if isinstance(effect, TagsChange):
        state.tags = (state.tags | set(effect.add)) - set(effect.remove)
    elif isinstance(effect, PriorityChange):
        state.priority = effect.priority.value
    elif isinstance(effect, TicketOpen):
        _open_ticket(conn, account_id, state, item, effect, now)
    elif isinstance(effect, TaskCreate):
        _create_task(conn, account_id, state, item, effect, now)
    elif isinstance(effect, EventEmit):
        payload = {
            "event": effect.name,
            "rule": item.rule,
            "contact_id": state.row.id,
            "contact_key": state.key,
            "at": now.isoformat(),
            "data": effect.data,
        }
        conn.execute(
            rule_events.insert().values(
                account_id=account_id,
                contact_id=state.row.id,
                rule=item.rule,
                name=effect.name,
                payload=orjson.dumps(payload).decode(),
                created_at=now,
            )
        )
    elif isinstance(effect, ReplySend):
        sender = sender or default_sender(conn, account_id)
        to = state.row.phone or (f"+{state.row.wa_id}" if state.row.wa_id else None)
        reason = (
            "the account has no WhatsApp number to send from"
            if sender is None
            else "the contact has no phone number to send to"
            if to is None
            else None
        )
        if reason is not None:
            logger.warning("rule %s: reply not queued: %s", item.rule, reason)
            return PlannedAction(item.rule, item.firing_key, item.reason, Skipped("reply", reason))
        assert sender is not None and to is not None
        _queue_reply(conn, account_id, state.row.id, item, effect, now, sender, to, reply_to)
    return item


def _rule_key(item: PlannedAction) -> str:
    return f"{_RULE_KEY_PREFIX}{item.rule}:{item.firing_key}"[:255]


def _open_ticket(
    conn: Connection,
    account_id: int,
    state: _ContactState,
    item: PlannedAction,
    effect: TicketOpen,
    now: datetime,
) -> None:
    key = _rule_key(item)
    # uq_tickets_one_open: when the contact already has an open ticket, this does nothing.
    new_id = insert_new(
        conn,
        tickets,
        {
            "account_id": account_id,
            "contact_id": state.row.id,
            "subject": effect.subject[:_SUBJECT_CHARS],
            "status": "open",
            "source_message_id": key,
            "created_at": now,
        },
    )
    if new_id is not None and state.key is not None:
        enqueue_crm_change(
            conn,
            account_id=account_id,
            object="tickets",
            record_key=key,
            operation="create",
            properties={"subject": effect.subject, "status": "open", "opened_at": now.isoformat()},
            contact_key=state.key,
            urgent=True,
            now=now,
        )


def _create_task(
    conn: Connection,
    account_id: int,
    state: _ContactState,
    item: PlannedAction,
    effect: TaskCreate,
    now: datetime,
) -> None:
    key = _rule_key(item)
    new_id = insert_new(
        conn,
        tasks,
        {
            "account_id": account_id,
            "contact_id": state.row.id,
            "subject": effect.subject,
            "owner": effect.owner,
            "due_at": effect.due_at,
            "status": "not_started",
            "idempotency_key": key,
            "created_at": now,
        },
    )
    if new_id is not None and state.key is not None:
        properties: dict[str, Any] = {
            "subject": effect.subject,
            "due_at": effect.due_at.isoformat(),
            "status": "not_started",
        }
        if effect.owner:
            properties["owner"] = effect.owner
        enqueue_crm_change(
            conn,
            account_id=account_id,
            object="tasks",
            record_key=key,
            operation="create",
            properties=properties,
            contact_key=state.key,
            now=now,
        )


def _queue_reply(
    conn: Connection,
    account_id: int,
    contact_id: int,
    item: PlannedAction,
    effect: ReplySend,
    now: datetime,
    sender: Sender,
    to: str,
    reply_to: tuple[int, str] | None,
) -> None:
    envelope = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to}
    body: dict[str, Any] = {**envelope, **effect.content}
    if reply_to is not None and effect.kind == "text":
        body["context"] = {"message_id": reply_to[1]}  # quote the question being answered
    enqueue_send(
        conn,
        account_id=account_id,
        phone_number_id=sender.phone_number_id,
        body=body,
        contact_id=contact_id,
        text=effect.text,
        rule=item.rule,
        in_reply_to=reply_to[0] if reply_to else None,
        fallback={**envelope, **effect.fallback} if effect.fallback else None,
        now=now,
    )
