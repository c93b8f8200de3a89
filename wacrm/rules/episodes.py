"""Unanswered stretches of a conversation ("episodes"), read from the store.

An *answer* is a person's message to the customer: an outbound ``messages`` row that no rule
wrote (``rule IS NULL``: an agent's, or one the CRM sent through us) and that did not fail.
Automatic replies are not answers: the price list does not answer the question a person
still has to look at. ``contacts.last_outbound_at`` is not used, as the outbox sets it for
every send, automatic ones included.

An episode starts with the first inbound message after the last answer and lasts until the
next answer; its key is that message's ``messages.id``. A new message after an answer starts
a new episode, so "one reminder per unanswered conversation" is one per episode.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    Select,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.sql.selectable import NamedFromClause

from wacrm.store.schema import messages, rule_firings

# Inbound types that do not wait for a person (matches workers/inbound.py).
NOT_AWAITING = ("reaction", "system")


@dataclass(frozen=True, slots=True)
class Episode:
    account_id: int
    contact_id: int
    message_id: int  # messages.id of the first unanswered inbound message
    since: datetime


def _answered_after(msg: NamedFromClause) -> ColumnElement[bool]:
    """A person answered at or after ``msg`` (an outbound row not written by a rule)."""
    out = messages.alias()
    return exists(
        select(out.c.id).where(
            out.c.contact_id == msg.c.contact_id,
            out.c.direction == "out",
            out.c.rule.is_(None),
            out.c.status != "failed",
            out.c.created_at >= msg.c.created_at,
        )
    )


def _awaiting(msg: NamedFromClause) -> ColumnElement[bool]:
    """``msg`` is an inbound message after the contact's last answer."""
    return and_(
        msg.c.direction == "in",
        msg.c.type.not_in(NOT_AWAITING),
        ~_answered_after(msg),
    )


def _first(msg: NamedFromClause) -> ColumnElement[bool]:
    """No earlier message of the same contact is awaiting an answer too."""
    earlier = messages.alias()
    return ~exists(
        select(earlier.c.id).where(
            earlier.c.contact_id == msg.c.contact_id,
            or_(
                earlier.c.created_at < msg.c.created_at,
                and_(earlier.c.created_at == msg.c.created_at, earlier.c.id < msg.c.id),
            ),
            _awaiting(earlier),
        )
    )


def _current_episode_query() -> Select[tuple[int, datetime]]:
    """The first inbound message after the contact's last answer, in one statement (it runs
    on every inbound message that may fire an unread rule): the last answer is a scalar
    subquery, and both are index lookups on ix_messages_contact."""
    answer = messages.alias("answer")
    last_answer = (
        select(func.max(answer.c.created_at))
        .where(
            answer.c.contact_id == bindparam("contact_id"),
            answer.c.direction == "out",
            answer.c.rule.is_(None),
            answer.c.status != "failed",
        )
        .scalar_subquery()
    )
    return (
        select(messages.c.id, messages.c.created_at)
        .where(
            messages.c.contact_id == bindparam("contact_id"),
            messages.c.account_id == bindparam("account_id"),
            messages.c.direction == "in",
            messages.c.type.not_in(NOT_AWAITING),
            or_(last_answer.is_(None), messages.c.created_at > last_answer),
        )
        .order_by(messages.c.created_at, messages.c.id)
        .limit(1)
    )


_CURRENT_EPISODE = _current_episode_query()


def current_episode(conn: Connection, account_id: int, contact_id: int) -> Episode | None:
    """The contact's open episode, if the customer is waiting for an answer."""
    params = {"contact_id": contact_id, "account_id": account_id}
    row = conn.execute(_CURRENT_EPISODE, params).first()
    return None if row is None else Episode(account_id, contact_id, int(row.id), row.created_at)


def _due_query() -> Select[tuple[int, int, int, datetime]]:
    m = messages.alias("m")
    fired = exists(
        select(rule_firings.c.id).where(
            rule_firings.c.rule == bindparam("rule"),
            rule_firings.c.account_id == m.c.account_id,
            rule_firings.c.message_id == m.c.id,
        )
    )
    return (
        select(m.c.id, m.c.account_id, m.c.contact_id, m.c.created_at)
        .where(
            m.c.direction == "in",
            m.c.created_at > bindparam("since", type_=m.c.created_at.type),
            m.c.created_at <= bindparam("cutoff", type_=m.c.created_at.type),
            m.c.contact_id.is_not(None),
            m.c.id > bindparam("after_id"),
            _awaiting(m),
            _first(m),
            ~fired,
        )
        .order_by(m.c.id)
        .limit(bindparam("limit"))
    )


_DUE = _due_query()


def due_episodes(
    conn: Connection,
    *,
    rule: str,
    cutoff: datetime,
    since: datetime,
    after_id: int = 0,
    limit: int = 200,
) -> list[Episode]:
    """Episodes of every account that began in ``(since, cutoff]`` and for which ``rule``
    has not fired, by message id after ``after_id`` (so a caller can page through them).

    ``since`` bounds the scan (ix_messages_direction_created): an episode that old is past
    reminding.
    """
    params = {"rule": rule, "since": since, "cutoff": cutoff, "after_id": after_id, "limit": limit}
    rows = conn.execute(_DUE, params).all()
    return [Episode(int(r.account_id), int(r.contact_id), int(r.id), r.created_at) for r in rows]


def recent_inbound_texts(conn: Connection, contact_id: int, limit: int = 5) -> list[str]:
    """The contact's latest inbound texts, oldest first (for language detection)."""
    rows = conn.execute(_RECENT_TEXTS, {"contact_id": contact_id, "limit": limit}).all()
    return [str(r.text) for r in reversed(rows)]


_RECENT_TEXTS = (
    select(messages.c.text)
    .where(
        messages.c.contact_id == bindparam("contact_id"),
        messages.c.direction == "in",
        messages.c.text.is_not(None),
        func.length(messages.c.text) > 0,
    )
    .order_by(messages.c.created_at.desc(), messages.c.id.desc())
    .limit(bindparam("limit", type_=Integer()))
)
