"""The ``sending_numbers`` table: which outbox worker sends from a business number now (a
lease), and whether sending from it is halted.

Meta's limits are per business number (messages per second, the pair rate), and every
sender paces only what it sends itself; two senders on one number (two ``wacrm serve``
processes, two machines of a marketplace deployment) would each send at the full rate. So a
sender claims a number's rows only while it holds the number's lease, or the lease is free or
has run out; it takes or renews the lease in the same transaction as the claim, which claims
serialise (PostgreSQL: an advisory lock; SQLite: its one write lock).

A halt (the account restricted, the number not registered, no sender for its provider) is
written here, so a restart does not send again from a number Meta has stopped; it lasts until
ops resume the number (``wacrm numbers resume``).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, func, or_, select

from wacrm.store.schema import sending_numbers, wa_outbox, whatsapp_numbers
from wacrm.store.unique import dialect_insert


def sender_name() -> str:
    """A name for one outbox worker, unique across processes and machines, that says where
    it runs (host and pid) for ``wacrm numbers``."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def take_leases(
    conn: Connection, numbers: Iterable[str], sender: str, until: datetime, now: datetime
) -> None:
    """Take (or renew) the lease of ``numbers`` for ``sender`` until ``until``; a number
    another sender holds, with time left, is not taken (the caller's claim left it alone)."""
    values = [{"phone_number_id": n, "sender": sender, "lease_until": until} for n in numbers]
    if not values:
        return
    t = sending_numbers
    stmt = dialect_insert(conn.dialect.name, t).values(values)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[t.c.phone_number_id],
            set_={"sender": stmt.excluded.sender, "lease_until": stmt.excluded.lease_until},
            where=or_(t.c.sender.is_(None), t.c.sender == sender, t.c.lease_until <= now),
        )
    )


def release_leases(engine: Engine, sender: str) -> None:
    """``sender`` stops: its numbers are free at once, not when their leases run out."""
    with engine.begin() as conn:
        conn.execute(
            sending_numbers.update()
            .where(sending_numbers.c.sender == sender)
            .values(sender=None, lease_until=None)
        )


def halt_in(conn: Connection, phone_number_id: str, reason: str, now: datetime) -> None:
    """Stop sending from ``phone_number_id`` until it is resumed (every sender, restarts)."""
    t = sending_numbers
    stmt = dialect_insert(conn.dialect.name, t).values(
        phone_number_id=phone_number_id, halted_reason=reason, halted_at=now
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[t.c.phone_number_id],
            set_={"halted_reason": stmt.excluded.halted_reason, "halted_at": now},
        )
    )


def halted_numbers(engine: Engine, numbers: Iterable[str]) -> set[str]:
    """Which of ``numbers`` are halted now."""
    t = sending_numbers
    with engine.connect() as conn:
        found = conn.execute(
            select(t.c.phone_number_id).where(
                t.c.phone_number_id.in_(list(numbers)), t.c.halted_reason.is_not(None)
            )
        ).scalars()
        return {str(n) for n in found}


def resume(engine: Engine, phone_number_id: str | None = None) -> list[str]:
    """Send again from ``phone_number_id`` (every halted number if None); the numbers
    resumed."""
    t = sending_numbers
    with engine.begin() as conn:
        query = select(t.c.phone_number_id).where(t.c.halted_reason.is_not(None))
        if phone_number_id is not None:
            query = query.where(t.c.phone_number_id == phone_number_id)
        found = [str(n) for n in conn.execute(query).scalars()]
        if found:
            conn.execute(
                t.update()
                .where(t.c.phone_number_id.in_(found))
                .values(halted_reason=None, halted_at=None)
            )
    return found


@dataclass(frozen=True, slots=True)
class NumberState:
    phone_number_id: str
    provider: str | None  # None: not registered (rows queued for it anyway)
    display_phone_number: str | None
    sender: str | None  # holds the lease, if it has not run out
    halted_reason: str | None
    halted_at: datetime | None
    queued: int  # outbox rows pending or sending


def number_states(engine: Engine, now: datetime) -> list[NumberState]:
    """Every number that is registered, has a sending state, or has rows queued."""
    n, s, o = whatsapp_numbers, sending_numbers, wa_outbox
    with engine.connect() as conn:
        queued: dict[str, int] = {
            str(pnid): int(count)
            for pnid, count in conn.execute(
                select(o.c.phone_number_id, func.count())
                .where(o.c.state.in_(("pending", "sending")))
                .group_by(o.c.phone_number_id)
            ).all()
        }
        registered = {r.phone_number_id: r for r in conn.execute(select(n))}
        states = {r.phone_number_id: r for r in conn.execute(select(s))}
    found = []
    for pnid in sorted(set(registered) | set(states) | set(queued)):
        number, state = registered.get(pnid), states.get(pnid)
        held = state is not None and state.lease_until is not None and state.lease_until > now
        found.append(
            NumberState(
                phone_number_id=str(pnid),
                provider=number.provider if number is not None else None,
                display_phone_number=number.display_phone_number if number is not None else None,
                sender=state.sender if held and state is not None else None,
                halted_reason=state.halted_reason if state is not None else None,
                halted_at=state.halted_at if state is not None else None,
                queued=queued.get(str(pnid), 0),
            )
        )
    return found
