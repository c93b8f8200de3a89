"""Recording what the CRM said about each record of a batch: the ids it assigned, then the
outbox rows, each in short transactions of their own (see :func:`record_outcomes`).

Confirmed rows are deleted only if their payload is still what was sent (a change merged in
while the batch was in flight stays pending); retryable failures are rescheduled with backoff
until the retry policy's bound, then dead-lettered; permanent failures are dead-lettered at
once with the CRM's error code and message. A whole call refused for reasons that are not the
records' fault (auth, configuration) only holds the rows, counting no attempt against them.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, bindparam

from wacrm.connectors.base import OutgoingRecord
from wacrm.model import WriteResult
from wacrm.store.schema import crm_outbox
from wacrm.sync.crm_ids import store_crm_ids
from wacrm.sync.retry import RetryPolicy
from wacrm.sync.transactions import write_rows

logger = logging.getLogger(__name__)

MAX_ERROR_TEXT = 1000


@dataclass(slots=True)
class FlushStats:
    """What one flush did; ``errors_by_code`` counts per-record failures by CRM error code."""

    calls: int = 0
    confirmed: int = 0
    retried: int = 0
    dead: int = 0
    deferred: int = 0
    errors_by_code: Counter[str] = field(default_factory=Counter)
    call_errors: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    key: str
    payload: str
    attempts: int
    created_at: datetime

    def record(self) -> OutgoingRecord:
        data = orjson.loads(self.payload)
        return OutgoingRecord(
            key=self.key,
            properties=dict(data.get("properties") or {}),
            contact_key=data.get("contact_key"),
        )


@dataclass(frozen=True, slots=True)
class Outcomes:
    """What to record for a batch: per-key results, or one failure for the whole call."""

    results: dict[str, WriteResult]
    whole_failure: WriteResult | None = None
    retry_after: float | None = None


def hold_rows(
    engine: Engine,
    batch: Sequence[OutboxRow],
    code: str,
    message: str,
    until: datetime,
    now: datetime,
) -> None:
    """Reschedule rows without counting an attempt against them."""

    def hold(conn: Connection, part: Sequence[OutboxRow]) -> int:
        return conn.execute(
            crm_outbox.update()
            .where(crm_outbox.c.id.in_([row.id for row in part]))
            .values(
                next_attempt_at=until,
                error_code=clip(code, 64),
                last_error=clip(message, MAX_ERROR_TEXT),
                updated_at=now,
            )
        ).rowcount

    write_rows(engine, sorted(batch, key=_row_id), hold)


@dataclass(frozen=True, slots=True)
class _Settlement:
    """One row's outcome: confirmed (``result.ok``), retried at ``due``, or dead-lettered."""

    row: OutboxRow
    result: WriteResult
    due: datetime | None = None


def record_outcomes(
    engine: Engine,
    account_id: int,
    obj: str,
    batch: Sequence[OutboxRow],
    outcomes: Outcomes,
    *,
    now: datetime,
    policy: RetryPolicy,
    rng: random.Random,
    stats: FlushStats,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Record each row's outcome: the CRM's ids, then the outbox rows.

    The two are written in transactions of their own (:mod:`wacrm.sync.transactions`), so
    the sync side never holds a contact and an outbox row at once while the inbox processor
    takes them in the other order. The ids go first: a crash between the two leaves the rows
    pending, and re-sending them is a harmless idempotent upsert, with the ids already kept.
    """
    crm_ids: list[tuple[str, str]] = []
    settlements: list[_Settlement] = []
    retried = dead = 0
    for row in batch:
        result = (
            outcomes.whole_failure
            or outcomes.results.get(row.key)
            or WriteResult(
                key=row.key,
                ok=False,
                error_code="NO_RESULT",
                error_message="the CRM returned no result for this record",
                retryable=True,
            )
        )
        if result.ok:
            settlements.append(_Settlement(row, result))
            if result.crm_id:
                crm_ids.append((row.key, result.crm_id))
            continue
        stats.errors_by_code[result.error_code or "UNKNOWN"] += 1
        attempts = row.attempts + 1
        delay = policy.delay(attempts, outcomes.retry_after, rng)
        elapsed = (now - row.created_at).total_seconds()
        if result.retryable and policy.should_retry(attempts, elapsed, delay):
            settlements.append(_Settlement(row, result, now + timedelta(seconds=delay)))
            retried += 1
        else:
            settlements.append(_Settlement(row, result))
            dead += 1
    if crm_ids:
        write_rows(
            engine,
            sorted(crm_ids),
            lambda conn, part: store_crm_ids(conn, account_id, obj, part),
        )
    settlements.sort(key=lambda s: s.row.id)
    removed = write_rows(
        engine, settlements, lambda conn, part: _settle(conn, part, now, policy, rng)
    )
    # A row whose payload changed in flight is not removed: its newer values still wait.
    stats.confirmed += removed
    stats.retried += retried
    stats.dead += dead
    if dead:
        sample = ", ".join([s.row.key for s in settlements if _is_dead(s)][:3])
        logger.warning("account %s: %d %s dead-lettered (e.g. %s)", account_id, dead, obj, sample)
    if progress is not None and removed:
        progress(removed)


def _is_dead(settlement: _Settlement) -> bool:
    return not settlement.result.ok and settlement.due is None


def _settle(
    conn: Connection,
    part: Sequence[_Settlement],
    now: datetime,
    policy: RetryPolicy,
    rng: random.Random,
) -> int:
    """Write ``part``'s outcomes to the outbox; returns how many confirmed rows were removed.
    Idempotent: a confirmed row is deleted only while its payload is what was sent, and a
    failure sets the attempt count rather than adding to it."""
    confirmed: list[dict[str, Any]] = []
    retries: list[dict[str, Any]] = []
    removed = 0
    for s in part:
        if s.result.ok:
            confirmed.append({"rid": s.row.id, "sent": s.row.payload})
        elif s.due is not None:
            retries.append(
                {
                    "rid": s.row.id,
                    "attempts": s.row.attempts + 1,
                    "due": s.due,
                    "code": clip(s.result.error_code, 64),
                    "error": clip(s.result.error_message, MAX_ERROR_TEXT),
                    "now": now,
                }
            )
        else:
            _dead_letter(conn, s.row, s.result, now, policy, rng)
    if confirmed:
        removed = conn.execute(
            crm_outbox.delete().where(
                crm_outbox.c.id == bindparam("rid"),
                crm_outbox.c.payload == bindparam("sent"),
            ),
            confirmed,
        ).rowcount
    if retries:
        conn.execute(
            crm_outbox.update()
            .where(crm_outbox.c.id == bindparam("rid"))
            .values(
                attempts=bindparam("attempts"),
                next_attempt_at=bindparam("due"),
                error_code=bindparam("code"),
                last_error=bindparam("error"),
                updated_at=bindparam("now"),
            ),
            retries,
        )
    return removed


def _dead_letter(
    conn: Connection,
    row: OutboxRow,
    result: WriteResult,
    now: datetime,
    policy: RetryPolicy,
    rng: random.Random,
) -> None:
    code = clip(result.error_code or "UNKNOWN", 64)
    message = clip(result.error_message, MAX_ERROR_TEXT)
    done = conn.execute(
        crm_outbox.update()
        .where(crm_outbox.c.id == row.id, crm_outbox.c.payload == row.payload)
        .values(
            state="dead",
            attempts=row.attempts + 1,
            error_code=code,
            last_error=message,
            updated_at=now,
        )
    )
    if done.rowcount == 0:
        # Newer values were merged in while the batch was in flight: they deserve their own
        # try rather than sharing the old values' fate.
        conn.execute(
            crm_outbox.update()
            .where(crm_outbox.c.id == row.id)
            .values(
                attempts=row.attempts + 1,
                next_attempt_at=now + timedelta(seconds=policy.backoff(row.attempts + 1, rng)),
                error_code=code,
                last_error=message,
                updated_at=now,
            )
        )


def _row_id(row: OutboxRow) -> int:
    return row.id


def clip(text: str | None, limit: int) -> str | None:
    return None if text is None else text[:limit]
