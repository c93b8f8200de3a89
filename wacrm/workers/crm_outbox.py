"""The CRM outbox worker: pending changes → batched, confirmed CRM writes.

Per (account, object) it sends batches of at most ``connector.max_batch`` records, contacts
before the tickets, tasks and message activities that reference them. Message activities are
never urgent and go last; while they drain, a wake (an urgent change committed) ends the
flush after the batch in flight, so the next flush takes the urgent change first.

A row leaves the outbox only when the CRM confirmed *that record*: a batch with three
failures retries those three (with backoff, via ``next_attempt_at``), and a permanent
failure becomes a dead-letter row (``state='dead'``) carrying the CRM's error code and
message.

Crash safety: rows stay ``pending`` while a batch is in flight, so a crash re-sends them on
restart; writes are idempotent upserts by ``record_key`` (invariant 4), so a re-send is
harmless. A change merged into a row while its batch was in flight changes the row's payload;
the confirmation then deletes nothing (``WHERE payload = <what was sent>``) and the newer
values go out in the next batch.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy import Connection, Engine, bindparam, func, select, tuple_
from sqlalchemy.exc import DBAPIError

from wacrm.connectors.base import ConnectorError, CrmConnector
from wacrm.model import WriteResult
from wacrm.store.schema import contacts, crm_outbox
from wacrm.sync.outcomes import FlushStats, OutboxRow, Outcomes, hold_rows, record_outcomes
from wacrm.sync.retry import RECORD_POLICY, RetryPolicy
from wacrm.sync.transactions import is_transient
from wacrm.sync.trigger import QueueState, Reason, TriggerPolicy, outbound_reason
from wacrm.workers.async_wake import AsyncSleep, WakeLoop

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# Contacts first: a ticket, task or message activity is associated with its contact by key.
# Activities last: they are the bulk (one per message) and nothing waits for them.
OBJECT_ORDER = ("contacts", "tickets", "tasks", "messages")
DEPENDENT_OBJECTS = frozenset({"tickets", "tasks", "messages"})
# Never urgent: their drain gives way to a wake between batches.
BACKGROUND_OBJECTS = frozenset({"messages"})
# Rows read per query: a few batches at a time bounds memory on a 100k backlog.
CHUNK_BATCHES = 10


def utcnow() -> datetime:
    return datetime.now(UTC)


class CrmOutboxWorker:
    """Drains ``crm_outbox``; :meth:`flush` is synchronous, :meth:`run` loops in the server."""

    name = "crm_outbox"

    def __init__(
        self,
        engine: Engine,
        connector_for: Callable[[int], CrmConnector],
        *,
        clock: Clock = utcnow,
        sleep: AsyncSleep = asyncio.sleep,
        trigger: TriggerPolicy | None = None,
        retry: RetryPolicy = RECORD_POLICY,
        rng: random.Random | None = None,
        poll_interval: float = 1.0,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self._connector_for = connector_for
        self._clock = clock
        self._trigger = trigger or TriggerPolicy()
        self._retry = retry
        self._rng = rng or random.Random()
        self._poll_interval = poll_interval
        self._progress = progress
        # An account whose CRM refused a whole call for good (auth, config) rests until then.
        self._paused_until: dict[int, datetime] = {}
        # Also read by flush(): it clears the wakes it is about to serve, and an activity
        # drain gives way to a wake that came after that.
        self._wakes = WakeLoop(sleep)
        self.last_stats = FlushStats()

    # -- Worker protocol ----------------------------------------------------------------------

    def wake(self) -> None:
        """Called after committing an urgent change; safe from any thread."""
        self._wakes.wake()

    async def run(self, stop: asyncio.Event) -> None:
        await self._wakes.run(stop, self._pass)

    async def _pass(self) -> float:
        try:
            # The CRM calls block; keep them off the event loop that answers webhooks.
            await asyncio.to_thread(self.flush)
        except Exception:  # a bug or a store outage must not end the loop
            logger.exception("crm outbox flush failed; retrying after the poll interval")
        return self._poll_interval

    # -- flushing -----------------------------------------------------------------------------

    def flush(self, force: bool = False) -> int:
        """Send what is due now; returns the number of records the CRM confirmed.

        Without ``force`` a queue is sent only when the trigger says so (urgent, changed share
        over the threshold, oldest change over the age limit, or a full batch).
        """
        # A wake from here on means an urgent change this flush may not have seen.
        self._wakes.clear()
        now = self._clock()
        stats = FlushStats()
        for account_id, queues in self._due_queues(now).items():
            paused = self._paused_until.get(account_id)
            if paused is not None and paused > now and not force:
                continue
            self._paused_until.pop(account_id, None)
            try:
                connector = self._connector_for(account_id)
            except Exception as exc:
                logger.error("account %s: no CRM connector (%s)", account_id, _short(exc))
                stats.call_errors.append(f"account {account_id}: {_short(exc)}")
                continue
            try:
                self._flush_account(account_id, connector, queues, now, force, stats)
            except DBAPIError as exc:
                if not is_transient(exc):
                    raise
                # A deadlock or lock timeout that outlived its retries: the rows are still
                # pending (a confirmed batch is re-sent, idempotently), the next flush retries.
                busy = f"store busy ({type(exc.orig).__name__})"
                logger.warning("account %s: %s; left for the next flush", account_id, busy)
                stats.call_errors.append(f"account {account_id}: {busy}")
        self.last_stats = stats
        if stats.calls:
            logger.info(
                "crm outbox: %d calls, %d confirmed, %d retried, %d dead, %d deferred",
                stats.calls,
                stats.confirmed,
                stats.retried,
                stats.dead,
                stats.deferred,
            )
        return stats.confirmed

    def _due_queues(self, now: datetime) -> dict[int, dict[str, QueueState]]:
        due = (crm_outbox.c.state == "pending") & (crm_outbox.c.next_attempt_at <= now)
        query = (
            select(
                crm_outbox.c.account_id,
                crm_outbox.c.object,
                func.count(),
                func.min(crm_outbox.c.created_at),
                func.max(crm_outbox.c.urgent),
            )
            .where(due)
            .group_by(crm_outbox.c.account_id, crm_outbox.c.object)
        )
        result: dict[int, dict[str, QueueState]] = {}
        with self.engine.connect() as conn:
            for account_id, obj, count, oldest, urgent in conn.execute(query):
                # The change-threshold share is of *contacts* (the mirrored records): other
                # objects, message activities above all, never count towards it.
                mirrored = _mirrored(conn, int(account_id)) if obj == "contacts" else None
                result.setdefault(int(account_id), {})[str(obj)] = QueueState(
                    pending=int(count),
                    oldest=_aware(oldest),
                    urgent=bool(urgent),
                    max_batch=1,  # replaced by the connector's, once it is known
                    mirrored=mirrored,
                )
        return result

    def _flush_account(
        self,
        account_id: int,
        connector: CrmConnector,
        queues: dict[str, QueueState],
        now: datetime,
        force: bool,
        stats: FlushStats,
    ) -> None:
        max_batch = max(1, int(connector.max_batch))
        reasons: dict[str, Reason | None] = {}
        for obj, state in queues.items():
            sized = QueueState(state.pending, state.oldest, state.urgent, max_batch, state.mirrored)
            reasons[obj] = outbound_reason(self._trigger, sized, now, force=force)
        # A ticket, task or activity about to go takes every pending contact with it, so the
        # record it references exists in the CRM first. The strongest reason wins: a full
        # batch of activities must not hold an urgent ticket's contact to full batches.
        dependent = [
            r for o in OBJECT_ORDER if o in DEPENDENT_OBJECTS and (r := reasons.get(o)) is not None
        ]
        if (
            dependent
            and "contacts" in queues
            and reasons.get("contacts") in (None, Reason.FULL_BATCH)
        ):
            reasons["contacts"] = next(
                (r for r in dependent if r is not Reason.FULL_BATCH), dependent[0]
            )
        ordered = [o for o in OBJECT_ORDER if o in queues] + sorted(set(queues) - set(OBJECT_ORDER))
        for obj in ordered:
            reason = reasons.get(obj)
            if reason is None:
                continue
            full_only = reason is Reason.FULL_BATCH
            if not self._send_queue(account_id, connector, obj, max_batch, full_only, now, stats):
                # The account's CRM refused a whole call for good (try again later), or an
                # activity drain gave way to urgent work (the next flush starts at once).
                return

    def _send_queue(
        self,
        account_id: int,
        connector: CrmConnector,
        obj: str,
        max_batch: int,
        full_only: bool,
        now: datetime,
        stats: FlushStats,
    ) -> bool:
        """Send ``obj``'s due rows in batches; ``False`` to stop the account's flush here."""
        after: tuple[datetime, int] | None = None
        chunk = max_batch * CHUNK_BATCHES
        while True:
            rows, after = self._fetch(account_id, obj, now, after, chunk)
            if not rows:
                return True
            for start in range(0, len(rows), max_batch):
                batch = rows[start : start + max_batch]
                if full_only and len(batch) < max_batch:
                    return True
                if obj in DEPENDENT_OBJECTS:
                    batch = self._without_pending_contacts(account_id, batch, stats)
                    if not batch:
                        continue
                if not self._send_batch(account_id, connector, obj, batch, stats):
                    return False
                if obj in BACKGROUND_OBJECTS and self._wakes.woken():
                    return False  # urgent work waits: the next flush starts at once
            if len(rows) < chunk:
                return True

    def _fetch(
        self,
        account_id: int,
        obj: str,
        now: datetime,
        after: tuple[datetime, int] | None,
        limit: int,
    ) -> tuple[list[OutboxRow], tuple[datetime, int] | None]:
        """Due rows, oldest due first, after the keyset position ``after``.

        Ordering by ``(next_attempt_at, id)`` follows ``ix_crm_outbox_due``, so each chunk is a
        range read of that index; ordering by ``id`` made SQLite sort every due row (100k of
        them in a backfill) for each chunk.
        """
        o = crm_outbox
        query = (
            select(
                o.c.id,
                o.c.record_key,
                o.c.payload,
                o.c.attempts,
                o.c.created_at,
                o.c.next_attempt_at,
            )
            .where(
                o.c.state == "pending",
                o.c.next_attempt_at <= now,
                o.c.account_id == account_id,
                o.c.object == obj,
            )
            .order_by(o.c.next_attempt_at, o.c.id)
            .limit(limit)
        )
        if after is not None:
            position = tuple_(
                bindparam("after_due", after[0], type_=o.c.next_attempt_at.type),
                bindparam("after_id", after[1], type_=o.c.id.type),
            )
            query = query.where(tuple_(o.c.next_attempt_at, o.c.id) > position)
        with self.engine.connect() as conn:
            found = conn.execute(query).all()
        rows = [
            OutboxRow(int(r.id), r.record_key, r.payload, int(r.attempts), _aware(r.created_at))
            for r in found
        ]
        return rows, ((found[-1].next_attempt_at, int(found[-1].id)) if found else after)

    def _without_pending_contacts(
        self, account_id: int, batch: list[OutboxRow], stats: FlushStats
    ) -> list[OutboxRow]:
        """Hold back tickets/tasks whose contact is still waiting (e.g. failed, backing off)."""
        keys: dict[int, str] = {}
        for row in batch:
            contact_key = orjson.loads(row.payload).get("contact_key")
            if contact_key:
                keys[row.id] = str(contact_key)
        if not keys:
            return batch
        with self.engine.connect() as conn:
            waiting = set(
                conn.execute(
                    select(crm_outbox.c.record_key).where(
                        crm_outbox.c.account_id == account_id,
                        crm_outbox.c.object == "contacts",
                        crm_outbox.c.state == "pending",
                        crm_outbox.c.record_key.in_(set(keys.values())),
                    )
                ).scalars()
            )
        kept = [row for row in batch if keys.get(row.id) not in waiting]
        stats.deferred += len(batch) - len(kept)
        return kept

    def _send_batch(
        self,
        account_id: int,
        connector: CrmConnector,
        obj: str,
        batch: list[OutboxRow],
        stats: FlushStats,
    ) -> bool:
        """One CRM call; ``False`` when the account should not be called again this flush."""
        stats.calls += 1
        try:
            results = connector.write_batch(obj, [row.record() for row in batch])
        except ConnectorError as exc:
            code = exc.code or ("RETRYABLE" if exc.retryable else "CALL_FAILED")
            stats.call_errors.append(f"account {account_id} {obj}: {code}: {_short(exc)}")
            logger.warning(
                "account %s: %s batch of %d failed as a whole (%s, retryable=%s): %s",
                account_id,
                obj,
                len(batch),
                code,
                exc.retryable,
                _short(exc),
            )
            if not exc.retryable:
                # Not the records' fault (auth, configuration): never dead-letter them for it,
                # but stop calling this CRM until an operator could have fixed it.
                until = self._clock() + timedelta(seconds=self._retry.cap)
                self._paused_until[account_id] = until
                hold_rows(self.engine, batch, code, _short(exc), until, self._clock())
                return False
            failure = WriteResult(
                key="", ok=False, error_code=code, error_message=_short(exc), retryable=True
            )
            self._record(account_id, obj, batch, Outcomes({}, failure, exc.retry_after), stats)
            return True
        except Exception as exc:  # a connector bug or transport error: retry, never lose
            stats.call_errors.append(f"account {account_id} {obj}: {type(exc).__name__}")
            logger.warning(
                "account %s: %s batch failed: %s: %s",
                account_id,
                obj,
                type(exc).__name__,
                _short(exc),
            )
            failure = WriteResult(
                key="",
                ok=False,
                error_code=type(exc).__name__,
                error_message=_short(exc),
                retryable=True,
            )
            self._record(account_id, obj, batch, Outcomes({}, failure), stats)
            return True
        self._record(account_id, obj, batch, Outcomes({r.key: r for r in results}), stats)
        return True

    def _record(
        self,
        account_id: int,
        obj: str,
        batch: list[OutboxRow],
        outcomes: Outcomes,
        stats: FlushStats,
    ) -> None:
        record_outcomes(
            self.engine,
            account_id,
            obj,
            batch,
            outcomes,
            now=self._clock(),
            policy=self._retry,
            rng=self._rng,
            stats=stats,
            progress=self._progress,
        )


def _mirrored(conn: Connection, account_id: int) -> int:
    count = conn.execute(
        select(func.count()).select_from(contacts).where(contacts.c.account_id == account_id)
    ).scalar()
    return int(count or 0)


def _aware(value: datetime | None) -> datetime:
    assert value is not None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _short(exc: BaseException) -> str:
    return str(exc)[:200] or type(exc).__name__
