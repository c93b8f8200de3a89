"""Short sync-side transactions that give way to the inbox processor instead of deadlocking.

The inbox processor (and the rules it runs) locks a contact, then merges into that record's
pending CRM outbox row, for several senders in one transaction, in its own order. The sync
side writes the same two kinds of rows when a batch comes back: the CRM's ids on contacts
(tickets, tasks), and the outbox rows themselves. Two rules keep the two apart on
PostgreSQL:

- the sync side never holds rows of both kinds at once: ids and outbox rows are written in
  separate transactions;
- a sync transaction that needs several rows waits for any one of them at most
  ``GIVE_WAY_MS`` (``SET LOCAL lock_timeout``), well inside PostgreSQL's ``deadlock_timeout``
  (1 s): when the inbox holds it, the sync side rolls back and writes the rows one per
  transaction, and a transaction that holds one row cannot be part of a deadlock.

A deadlock, serialization failure or lock timeout that happens anyway is retried a few times
here (:func:`run_transaction`); after that it is raised to the worker, whose loop retries the
next tick. SQLite serialises writers (``BEGIN IMMEDIATE``), so none of this arises there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# SQLSTATEs a retry can cure: serialization failure, deadlock detected, lock not available.
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
GIVE_WAY_MS = 100
ATTEMPTS = 3


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a database refusal that the same transaction may pass on a retry."""
    return (
        isinstance(exc, DBAPIError)
        and not exc.connection_invalidated
        and getattr(exc.orig, "sqlstate", None) in TRANSIENT_SQLSTATES
    )


def run_transaction(
    engine: Engine,
    work: Callable[[Connection], R],
    *,
    give_way: bool = False,
    attempts: int = ATTEMPTS,
) -> R:
    """``work`` in a transaction of its own, run again (from the start) when it fails in a
    way a retry can cure; with ``give_way`` it waits for a row lock only ``GIVE_WAY_MS``."""
    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as conn:
                if give_way and conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{GIVE_WAY_MS}ms'")
                return work(conn)
        except DBAPIError as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            logger.info("store refused a sync transaction (%s); retrying", _sqlstate(exc))
    raise AssertionError("unreachable: the last attempt returns or raises")


def write_rows(
    engine: Engine,
    items: Sequence[T],
    write: Callable[[Connection, Sequence[T]], int],
) -> int:
    """``write(conn, items)`` in one transaction that gives way to other lockers; if it had
    to, each item in a transaction of its own. Returns the sum of what ``write`` returned.

    A transaction that gave way or failed was rolled back as a whole, so ``write`` runs again
    for its items; it must give the same result when it does."""
    if not items:
        return 0
    try:
        return run_transaction(engine, lambda conn: write(conn, items), give_way=True, attempts=1)
    except DBAPIError as exc:
        if not is_transient(exc):
            raise
        logger.info(
            "sync write gave way (%s); writing %d rows one by one", _sqlstate(exc), len(items)
        )
    total = 0
    for item in items:
        total += run_transaction(engine, partial(_write_one, write, item))
    return total


def _write_one(write: Callable[[Connection, Sequence[T]], int], item: T, conn: Connection) -> int:
    return write(conn, [item])


def _sqlstate(exc: DBAPIError) -> str:
    return str(getattr(exc.orig, "sqlstate", None) or type(exc.orig).__name__)
