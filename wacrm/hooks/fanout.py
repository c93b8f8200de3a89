"""Fan-out: one ``hook_deliveries`` row per (active subscription, matching rule event).

Each subscription remembers the last event it was fanned out through (``delivered_through``).
A page of newer events is read, a delivery row inserted for each matching event that has
none yet, and ``delivered_through`` advanced, all in one transaction: a crash rolls the whole
page back, and the next pass does it again. The unique key (subscription_id, event_id) makes
a repeat harmless whatever happens, so every (subscription, event) gets exactly one row.

Ids are handed out before commit: on PostgreSQL an event with a lower id can commit after a
higher one was read. So ``delivered_through`` only moves past events older than ``settle``
(their transaction has long ended); newer ones get their rows now all the same (no delay),
and are looked at again, cheaply, until they settle.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, select

from wacrm.hooks.subscriptions import ALL_EVENTS
from wacrm.store.schema import hook_deliveries, hook_subscriptions, rule_events
from wacrm.store.unique import dialect_insert

SETTLE = timedelta(seconds=60)
PAGE_SIZE = 500


class _Raced(Exception):
    """Another worker advanced the subscription meanwhile: this page is its to do."""


def fan_out(
    engine: Engine, now: datetime, *, settle: timedelta = SETTLE, page_size: int = PAGE_SIZE
) -> int:
    """Give every active subscription its delivery rows; returns how many were created."""
    with engine.connect() as conn:
        subs = conn.execute(
            select(
                hook_subscriptions.c.id,
                hook_subscriptions.c.account_id,
                hook_subscriptions.c.event,
                hook_subscriptions.c.delivered_through,
            )
            .where(hook_subscriptions.c.state == "active")
            .order_by(hook_subscriptions.c.id)
        ).all()
    created = 0
    for sub in subs:
        try:
            created += _fan_out_one(engine, sub, now - settle, now, page_size)
        except _Raced:
            continue
    return created


def _fan_out_one(
    engine: Engine, sub: Any, settled_before: datetime, now: datetime, page_size: int
) -> int:
    through = int(sub.delivered_through)
    after, created = through, 0
    while True:
        with engine.begin() as conn:
            events = conn.execute(
                select(
                    rule_events.c.id,
                    rule_events.c.name,
                    rule_events.c.created_at,
                    hook_deliveries.c.id.label("delivery_id"),
                )
                .select_from(
                    rule_events.outerjoin(
                        hook_deliveries,
                        and_(
                            hook_deliveries.c.event_id == rule_events.c.id,
                            hook_deliveries.c.subscription_id == sub.id,
                        ),
                    )
                )
                .where(rule_events.c.account_id == sub.account_id, rule_events.c.id > after)
                .order_by(rule_events.c.id)
                .limit(page_size)
            ).all()
            rows = [
                {
                    "account_id": sub.account_id,
                    "subscription_id": sub.id,
                    "event_id": e.id,
                    "state": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for e in events
                if e.delivery_id is None and sub.event in (ALL_EVENTS, e.name)
            ]
            if rows:
                # Another worker may be inserting the same rows: its win is ours too.
                conn.execute(
                    dialect_insert(conn.dialect.name, hook_deliveries).on_conflict_do_nothing(),
                    rows,
                )
            # Advance over the settled events only, and only while they are all settled.
            new_through = through
            if after == through:
                for e in events:
                    if e.created_at > settled_before:
                        break
                    new_through = int(e.id)
            if new_through != through:
                moved = conn.execute(
                    hook_subscriptions.update()
                    .where(
                        hook_subscriptions.c.id == sub.id,
                        hook_subscriptions.c.delivered_through == through,
                    )
                    .values(delivered_through=new_through)
                )
                if moved.rowcount != 1:
                    raise _Raced  # rolls this page back
        created += len(rows)
        if len(events) < page_size:
            return created
        through = new_through
        after = int(events[-1].id)
