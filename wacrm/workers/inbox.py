"""The inbox processor: pending inbox rows → contact mirror, tickets, replies, CRM changes.

Rows are claimed in id order inside one transaction per batch (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so several processors share the work; SQLite's BEGIN IMMEDIATE serialises them).
Each row runs in a SAVEPOINT: a row that raises is rolled back alone and marked
``quarantined`` with its reason (plus a ``quarantine`` row), and the batch goes on. A row
becomes ``done`` in the same transaction as its effects, so a crash repeats nothing and
loses nothing: uncommitted rows are still ``pending`` on restart.

Database failures (lost connection, deadlock, lock timeout) are not bad data: the batch is
rolled back and retried. Only if the same row keeps failing that way is it quarantined, so
no single row can stall the loop for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Row, select
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from wacrm.config import Settings
from wacrm.model import DeliveryStatus, advance_status
from wacrm.rules.auto_reply import AutoReplies
from wacrm.store.inbox import QuarantineRow, insert_quarantine_rows
from wacrm.store.schema import inbox, messages
from wacrm.whatsapp.meta_webhook import parse_message, parse_status
from wacrm.workers.inbound import handle_message

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
QUARANTINE_SOURCE = "inbox"
_MAX_REASON_CHARS = 2000
_PASS_LIMIT = 500

_Payload = dict[str, Any] | ValueError


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _Deferred(Exception):
    """Leave the row pending and look again later (a status racing its message's send)."""


class _StoreFailure(Exception):
    """A database error while processing one row; the batch must be rolled back."""

    def __init__(self, row_id: int, cause: BaseException) -> None:
        super().__init__(f"inbox row {row_id}: {type(cause).__name__}")
        self.row_id = row_id
        self.cause = cause


class InboxProcessor:
    name = "inbox"

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        replies: AutoReplies,
        clock: Clock = _utcnow,
        batch_size: int = 100,
        poll_seconds: float = 0.5,
        status_retries: int = 20,
        status_grace: timedelta = timedelta(minutes=2),
        store_retries: int = 5,
        downstream: Sequence[Callable[[], None]] = (),
    ) -> None:
        """``status_retries``/``status_grace``: a status whose message is unknown stays
        pending until it was tried that often *and* is that old, then is kept as an orphan.
        ``store_retries``: database failures on one row before it is quarantined.
        ``downstream``: called after a pass that finished rows (the outbox workers' ``wake``),
        so a reply leaves now rather than at the sender's next poll."""
        self._engine = engine
        self._settings = settings
        self._replies = replies
        self._clock = clock
        self._batch_size = batch_size
        self._poll_seconds = poll_seconds
        self._status_retries = status_retries
        self._status_grace = status_grace
        self._store_retries = store_retries
        self._downstream = tuple(downstream)
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- Worker protocol ---------------------------------------------------------------------

    def wake(self) -> None:
        """Safe from any thread (the inbox writer commits on its own thread)."""
        loop, event = self._loop, self._wakeup
        if loop is None or event is None:
            return  # not running yet: run() looks at the inbox first thing anyway
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            with contextlib.suppress(RuntimeError):  # loop already closed: nothing to wake
                loop.call_soon_threadsafe(event.set)

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = wakeup = asyncio.Event()
        failures = 0
        while not stop.is_set():
            wakeup.clear()  # before looking, so a wake during the pass causes another pass
            try:
                finished = await asyncio.to_thread(self.process_pending, _PASS_LIMIT)
            except Exception:
                failures += 1
                logger.exception("inbox pass failed (%d in a row); retrying", failures)
                await _wait_any(stop, timeout=min(self._poll_seconds * 2**failures, 30.0))
                continue
            failures = 0
            if finished:
                for wake in self._downstream:
                    wake()
            if finished < _PASS_LIMIT:  # else there is more right now: no wait
                await _wait_any(wakeup, stop, timeout=self._poll_seconds)

    # -- processing --------------------------------------------------------------------------

    def process_pending(self, limit: int = 500) -> int:
        """Process up to ``limit`` pending rows; returns how many were finished (done or
        quarantined). Rows left pending for later (deferred statuses) are not counted, and
        each is tried at most once per call."""
        finished = 0
        after_id = 0
        while finished < limit:
            try:
                claimed, done, after_id = self._process_batch(
                    after_id, min(self._batch_size, limit - finished)
                )
            except _StoreFailure as failure:
                self._count_store_failure(failure)
                raise failure.cause from failure
            finished += done
            if claimed == 0:
                break
        return finished

    def _process_batch(self, after_id: int, size: int) -> tuple[int, int, int]:
        with self._engine.begin() as conn:
            rows = conn.execute(
                select(inbox)
                .where(inbox.c.state == "pending", inbox.c.id > after_id)
                .order_by(inbox.c.id)
                .limit(size)
                .with_for_update(skip_locked=True)
            ).all()
            loaded = [(row, _load(row.payload)) for row in rows]
            # Contacts are locked in one global order (by sender), so processors sharing the
            # inbox never wait on each other in a cycle; each sender's rows keep id order.
            loaded.sort(key=lambda item: (_sender(item[0].kind, item[1]), item[0].id))
            done = sum(self._process_row(conn, row, payload) for row, payload in loaded)
        return len(rows), done, rows[-1].id if rows else after_id

    def _process_row(self, conn: Connection, row: Row[Any], payload: _Payload) -> bool:
        """Handle one row in a savepoint; True when it left the pending state."""
        now = self._clock()
        try:
            with conn.begin_nested():
                self._dispatch(conn, row, payload, now)
        except _Deferred as deferred:
            self._defer(conn, row, str(deferred))
            return False
        except DBAPIError as exc:
            # A value the database refuses is bad data; anything else is the database.
            if not isinstance(exc, IntegrityError | DataError) or exc.connection_invalidated:
                raise _StoreFailure(row.id, exc) from exc
            self._quarantine(conn, row, now, _reason(exc))
            return True
        except Exception as exc:  # bad data of any shape: keep it, say why, go on
            self._quarantine(conn, row, now, _reason(exc))
            return True
        conn.execute(
            inbox.update()
            .where(inbox.c.id == row.id)
            .values(state="done", processed_at=now, attempts=row.attempts + 1)
        )
        return True

    def _dispatch(self, conn: Connection, row: Row[Any], payload: _Payload, now: datetime) -> None:
        if isinstance(payload, ValueError):
            raise payload
        if row.kind == "message":
            handle_message(
                conn,
                account_id=row.account_id,
                message=parse_message(payload),
                raw=payload["message"],
                replies=self._replies,
                now=now,
                default_phone_number_id=self._settings.whatsapp_phone_number_id,
            )
        elif row.kind == "status":
            self._apply_status(conn, row, payload, now)
        elif row.kind == "error":
            error = payload.get("error") or {}
            logger.warning(
                "WhatsApp reported error %s (%s) for account %s",
                error.get("code"),
                error.get("title") or error.get("message"),
                row.account_id,
            )
        elif not row.kind.startswith("field:"):
            raise ValueError(f"unknown inbox kind {row.kind!r}")
        # field:* rows (account, template, quality updates) are kept as the record.

    def _apply_status(
        self, conn: Connection, row: Row[Any], payload: dict[str, Any], now: datetime
    ) -> None:
        update = parse_status(payload)
        found = conn.execute(
            select(messages.c.id, messages.c.status)
            .where(
                messages.c.account_id == row.account_id,
                messages.c.provider_message_id == update.provider_message_id,
                messages.c.direction == "out",
            )
            .with_for_update()
        ).first()
        if found is None:
            # The send's commit (which records the wamid) may not have landed yet.
            tried = row.attempts + 1
            if tried < self._status_retries or now - row.received_at < self._status_grace:
                raise _Deferred(f"no outbound message {update.provider_message_id} yet")
            note = f"orphan: no outbound message {update.provider_message_id} after {tried} tries"
            logger.info("inbox row %s: %s", row.id, note)
            conn.execute(inbox.update().where(inbox.c.id == row.id).values(error=note))
            return
        current = DeliveryStatus.parse(found.status)
        new = advance_status(current, update.status)
        if new is current:
            return  # late or repeated: the message is already further along
        values: dict[str, Any] = {"status": new.value, "status_at": update.timestamp}
        if update.errors:
            error = update.errors[0]
            values["error_code"] = str(error.get("code"))[:32]
            values["error_title"] = error.get("title") or error.get("message")
        conn.execute(messages.update().where(messages.c.id == found.id).values(**values))

    # -- row states --------------------------------------------------------------------------

    def _defer(self, conn: Connection, row: Row[Any], note: str) -> None:
        conn.execute(
            inbox.update().where(inbox.c.id == row.id).values(attempts=row.attempts + 1, error=note)
        )

    def _quarantine(self, conn: Connection, row: Row[Any], now: datetime, reason: str) -> None:
        logger.warning("inbox row %s (%s) quarantined: %s", row.id, row.kind, reason)
        conn.execute(
            inbox.update()
            .where(inbox.c.id == row.id)
            .values(state="quarantined", error=reason, processed_at=now, attempts=row.attempts + 1)
        )
        insert_quarantine_rows(
            conn,
            [QuarantineRow(row.account_id, QUARANTINE_SOURCE, reason, _quarantined(row), now)],
        )

    def _count_store_failure(self, failure: _StoreFailure) -> None:
        """Record a database failure against its row, in a fresh transaction; after
        ``store_retries`` of them the row is quarantined so it cannot stall the loop."""
        now = self._clock()
        try:
            with self._engine.begin() as conn:
                row = conn.execute(
                    select(inbox).where(inbox.c.id == failure.row_id, inbox.c.state == "pending")
                ).first()
                if row is None:
                    return
                if row.attempts + 1 >= self._store_retries:
                    self._quarantine(
                        conn, row, now, "repeated store failure: " + _reason(failure.cause)
                    )
                else:
                    self._defer(conn, row, _reason(failure.cause))
        except DBAPIError:
            logger.warning("could not record the failure of inbox row %s", failure.row_id)


def _load(raw: str) -> _Payload:
    """The stored JSON object, or the error that makes the row unusable."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return ValueError(f"payload is not JSON ({exc})")
    return payload if isinstance(payload, dict) else ValueError("payload is not a JSON object")


def _sender(kind: str, payload: _Payload) -> str:
    message = payload.get("message") if kind == "message" and isinstance(payload, dict) else None
    if not isinstance(message, dict):
        return ""
    return str(message.get("from") or message.get("from_user_id") or "")


def _reason(exc: BaseException) -> str:
    # Exceptions from parsing and SQL carry the data, not credentials; cut them to size.
    text = str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
    return f"{type(exc).__name__}: {text}"[:_MAX_REASON_CHARS]


def _quarantined(row: Row[Any]) -> str:
    return orjson.dumps(
        {
            "inbox_id": row.id,
            "kind": row.kind,
            "event_id": row.event_id,
            "payload": row.payload,
        }
    ).decode()


async def _wait_any(*events: asyncio.Event, timeout: float) -> None:
    """Return when any of ``events`` is set, or after ``timeout`` seconds."""
    tasks = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
