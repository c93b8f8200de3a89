"""The inbox processor: pending inbox rows → contact mirror, tickets, rules, CRM changes.

Rows are claimed in id order inside one transaction per batch (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so several processors share the work; SQLite's BEGIN IMMEDIATE serialises them).
Each row runs in a SAVEPOINT: a row that raises is rolled back alone and marked
``quarantined`` with its reason (plus a ``quarantine`` row), and the batch goes on. A row
becomes ``done`` in the same transaction as its effects, so a crash repeats nothing and
loses nothing: uncommitted rows are still ``pending`` on restart.

Database failures (lost connection, deadlock, lock timeout) are not bad data: the batch is
rolled back and retried. Only if the same row keeps failing that way is it quarantined, so
no single row can stall the loop for ever.

Rules (:class:`wacrm.rules.runtime.RuleRuntime`: auto-replies, tags, priority, hand-over) run
on each new message, and on each status that turns a message ``failed``, in the row's
transaction. They run in a savepoint of their own: a rule that breaks is rolled back and
recorded in ``quarantine`` (source ``rules``) while the message itself is kept, so an agent
still sees it.

A failed status saying the 24 h window had closed (the send was accepted, then refused)
queues the send's template fallback, in the same transaction
(:mod:`wacrm.workers.late_fallback`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from sqlalchemy import Connection, Engine, Row, bindparam, select
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from wacrm.config import Settings
from wacrm.model import DeliveryStatus, InboundMessage, MessageType, StatusUpdate, advance_status
from wacrm.rules.runtime import RuleRuntime
from wacrm.store.accounts import learn_waba
from wacrm.store.inbox import QuarantineRow, insert_quarantine_rows
from wacrm.store.ingest_gauge import IngestGauge, ingest_gauge
from wacrm.store.schema import inbox, messages
from wacrm.whatsapp.meta_webhook import parse_message, parse_status
from wacrm.whatsapp.twilio_webhook import parse_twilio_message, parse_twilio_status
from wacrm.workers.inbound import handle_message
from wacrm.workers.late_fallback import queue_late_fallback
from wacrm.workers.message_activity import queue_outbound_activity
from wacrm.workers.threaded import Downstream, Handover, WorkerThread

logger = logging.getLogger(__name__)

# Both providers' inbox rows become the same domain events; the row says which parser.
_PARSERS: dict[
    str, tuple[Callable[[dict[str, Any]], InboundMessage], Callable[[dict[str, Any]], StatusUpdate]]
] = {
    "meta": (parse_message, parse_status),
    "twilio": (parse_twilio_message, parse_twilio_status),
}


def _parsers(
    provider: str,
) -> tuple[Callable[[dict[str, Any]], InboundMessage], Callable[[dict[str, Any]], StatusUpdate]]:
    try:
        return _PARSERS[provider]
    except KeyError:
        raise ValueError(f"no parser for provider {provider!r}") from None


Clock = Callable[[], datetime]
QUARANTINE_SOURCE = "inbox"
RULES_QUARANTINE_SOURCE = "rules"
_MAX_REASON_CHARS = 2000
_PASS_LIMIT = 500
_OTHERS_BATCH = 20  # receipts per transaction: short, so a message never waits long behind
# A batch is sized to take about this long at the recent pace per row (one row at least): on
# SQLite the inbox writer waits for its transaction, with every webhook of its next group.
# 100 messages at a few ms each held the lock for a third of a second and capped ingest at
# the processing rate.
_BATCH_SECONDS = 0.01
# While a backlog drains (``_BACKLOG_AFTER`` full batches in a row), PostgreSQL batches are
# sized to ~100 ms: it locks rows, not the store, and ingest runs in processes of its own, so
# longer batches share each batch's claim, hand-over and commit among more rows
# (bench/drain.py, 2,000 messages: 49 -> 84 messages/s). Not before: at a steady 20
# questions/s they made statuses' batches long enough to hold new messages back (auto-reply
# p99 44 -> 60 ms measured).
_BACKLOG_BATCH_SECONDS = {"sqlite": _BATCH_SECONDS, "postgresql": 0.1}
_BACKLOG_AFTER = 3
# Ingest is "bursting" above this many stored webhooks a second: more than the processor
# could handle (a few ms of CPU each). It then takes at most ``_BURST_SHARE`` of the time at
# that rate, and proportionally less as the rate grows (1 % at 10,000/s), resting in
# between, so the CPU goes to answering webhooks; the backlog waits, durable.
_BURST_RATE = 1000.0
_BURST_SHARE = 0.1
_MAX_REST = 1.0
# Built once: it runs for every row (building and keying a statement costs more than it).
_DONE = (
    inbox.update()
    .where(inbox.c.id == bindparam("row_id"))
    .values(state="done", processed_at=bindparam("at"), attempts=bindparam("tries"))
)

_Payload = dict[str, Any] | ValueError


def _utcnow() -> datetime:
    return datetime.now(UTC)


def burst_pause(spent: float, rate: float, burst_rate: float, share: float) -> float:
    """Seconds to rest after ``spent`` seconds of work while webhooks are stored at ``rate``
    a second: none below ``burst_rate``; at it, enough that the work is ``share`` of the
    time; above it, a share shrinking in proportion to the rate, so the processor's CPU
    stays about constant in webhooks however hard ingest is pressed (at most ``_MAX_REST``,
    so a long burst still sees progress)."""
    if rate < burst_rate:
        return 0.0
    allowed = share * burst_rate / rate
    return min(spent * (1.0 - allowed) / allowed, _MAX_REST)


class _Deferred(Exception):
    """Leave the row pending and look again later (a status racing its message's send)."""


class _StoreFailure(Exception):
    """A database error while processing one row; the batch must be rolled back."""

    def __init__(self, row_id: int, cause: BaseException) -> None:
        super().__init__(f"inbox row {row_id}: {type(cause).__name__}")
        self.row_id = row_id
        self.cause = cause


Kinds = Literal["all", "messages", "others"]


class InboxProcessor:
    name = "inbox"

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        rules: RuleRuntime,
        clock: Clock = _utcnow,
        batch_size: int = 100,
        poll_seconds: float = 0.5,
        status_retries: int = 20,
        status_grace: timedelta = timedelta(minutes=2),
        store_retries: int = 5,
        downstream: Sequence[Callable[[], None] | Downstream] = (),
        handover: Handover[Any] | None = None,
        others_every: float = 0.1,
        batch_seconds: float | None = None,
        burst_rate: float = _BURST_RATE,
        burst_share: float = _BURST_SHARE,
        gauge: IngestGauge | None = None,
    ) -> None:
        """``status_retries``/``status_grace``: a status whose message is unknown stays
        pending until it was tried that often *and* is that old, then is kept as an orphan.
        ``store_retries``: database failures on one row before it is quarantined.
        ``downstream``: the workers fed (the outboxes' ``wake``, or a :class:`Downstream`
        to limit how often one is woken), woken after a pass that may have queued work for
        them: a new message or a failure, not a mere delivery receipt. So a reply leaves now
        rather than at the sender's next poll, and the three receipts of every reply do not
        send the outboxes looking for nothing.
        ``handover``: the WhatsApp sender; a batch that queued replies claims them for it
        before committing and hands them over after, so they leave without a transaction
        of their own (one commit and one wait for SQLite's lock fewer per reply).
        ``others_every``: how long rows other than messages (statuses, errors, account
        events) may wait, so that they are taken in batches (see :meth:`_step`).
        ``batch_seconds``: batches are sized to take about this long (one row at least);
        by default, longer on PostgreSQL while a backlog drains (``_BACKLOG_BATCH_SECONDS``).
        ``burst_rate``/``burst_share``/``gauge``: while the store's ``gauge`` (see
        :mod:`wacrm.store.ingest_gauge`) says webhooks are being stored at ``burst_rate``
        or more per second, the processor works at most ``burst_share`` of the time, less
        as the rate grows (:func:`burst_pause`)."""
        self._engine = engine
        self._settings = settings
        self.rules = rules
        self._clock = clock
        self._batch_size = batch_size
        self._poll_seconds = poll_seconds
        self._status_retries = status_retries
        self._status_grace = status_grace
        self._store_retries = store_retries
        self._downstream = tuple(
            d if isinstance(d, Downstream) else Downstream(d) for d in downstream
        )
        self._fed_downstream = False  # set by a pass that ran rules or mirrored a message
        self._queued = False  # set by a batch that may have queued replies
        self._handover = handover
        self._others_every = others_every
        self._others_at = float("-inf")  # time.monotonic() of the last pass taking them
        self._others_owed = False  # a pass left them for later
        self._failures = 0
        self._wabas_known: set[tuple[int, str]] = set()  # (account, WABA id) recorded
        # Given, ``batch_seconds`` holds for backlogs too; by default they get the store's.
        self._batch_seconds = batch_seconds if batch_seconds is not None else _BATCH_SECONDS
        self._backlog_seconds = (
            batch_seconds
            if batch_seconds is not None
            else _BACKLOG_BATCH_SECONDS.get(engine.dialect.name, _BATCH_SECONDS)
        )
        self._row_seconds = 0.002  # recent seconds per row (moving average): sizes batches
        self._burst_rate = burst_rate
        self._burst_share = burst_share
        self._gauge = gauge or ingest_gauge(engine)
        self.rested = 0.0  # seconds given to ingest during bursts (an operations figure)
        self._thread = WorkerThread("inbox-processor", self._step)

    # -- Worker protocol ---------------------------------------------------------------------

    def wake(self) -> None:
        """Safe from any thread (the inbox writer commits on its own thread)."""
        self._thread.wake()

    async def run(self, stop: asyncio.Event) -> None:
        await self._thread.run(stop)

    def _step(self) -> float:
        """One pass on the processor's thread; how long to wait for a wake after it.

        Messages are taken at every wake. Everything else (mostly delivery receipts: three
        per reply) waits up to ``others_every`` and is then taken in small batches, after
        the messages and giving way to a wake between batches: a transaction per receipt
        would otherwise be most of the processor's work, and a long batch of them would
        stand in front of the next customer's message."""
        started = time.monotonic()
        try:
            finished = self.process_pending(_PASS_LIMIT, kinds="messages")
            if started - self._others_at >= self._others_every:
                done, complete = self._drain(
                    _PASS_LIMIT, "others", size=_OTHERS_BATCH, give_way=self._thread.woken
                )
                finished += done
                if complete:
                    self._others_at, self._others_owed = started, False
            else:
                self._others_owed = True
        except Exception:
            self._failures += 1
            logger.exception("inbox pass failed (%d in a row); retrying", self._failures)
            return min(self._poll_seconds * 2.0**self._failures, 30.0)
        self._failures = 0
        fed, self._fed_downstream = self._fed_downstream, False
        now = time.monotonic()
        wait = self._feed(fed, now)
        if self._others_owed:  # come back for them when their turn is due
            wait = min(wait, max(0.0, self._others_at + self._others_every - now))
        return 0.0 if finished >= _PASS_LIMIT else wait  # a full pass: more is waiting now

    def _give_way_to_ingest(self, spent: float) -> None:
        """During an ingest burst, rest after the batch that took ``spent`` seconds (see
        :func:`burst_pause`)."""
        pause = burst_pause(spent, self._gauge.rate(), self._burst_rate, self._burst_share)
        if pause > 0.0:
            self.rested += pause
            self._thread.rest(pause)

    def _feed(self, fed: bool, now: float) -> float:
        """Wake the downstream workers owed a wake and allowed one now; the seconds until
        the next owed one is allowed (the poll interval if none is owed)."""
        waits = [target.feed(fed, now) for target in self._downstream]
        return min([self._poll_seconds, *(w for w in waits if w is not None)])

    # -- processing --------------------------------------------------------------------------

    def process_pending(self, limit: int = 500, *, kinds: Kinds = "all") -> int:
        """Process up to ``limit`` pending rows (of ``kinds``: inbound messages, the
        others, or all); returns how many were finished (done or quarantined). Rows left
        pending for later (deferred statuses) are not counted, and each is tried at most
        once per call."""
        return self._drain(limit, kinds)[0]

    def _drain(
        self,
        limit: int,
        kinds: Kinds,
        *,
        size: int | None = None,
        give_way: Callable[[], bool] | None = None,
    ) -> tuple[int, bool]:
        """(rows finished, whether everything pending was looked at): batches of ``size``
        rows until none is left or ``limit`` is reached, or ``give_way`` says to stop."""
        finished = 0
        after_id = 0
        full = 0  # full batches in a row: a backlog
        while finished < limit:
            began = time.monotonic()
            wanted = self._sized(
                min(size or self._batch_size, limit - finished), full >= _BACKLOG_AFTER
            )
            try:
                claimed, done, after_id = self._process_batch(after_id, wanted, kinds)
            except _StoreFailure as failure:
                self._count_store_failure(failure)
                raise failure.cause from failure
            finished += done
            if claimed == 0:
                return finished, True
            full = full + 1 if claimed >= wanted else 0
            self._give_way_to_ingest(time.monotonic() - began)
            if give_way is not None and give_way():
                return finished, False
        return finished, False

    def _process_batch(self, after_id: int, size: int, kinds: Kinds) -> tuple[int, int, int]:
        query = select(inbox).where(inbox.c.state == "pending", inbox.c.id > after_id)
        if kinds == "messages":
            query = query.where(inbox.c.kind == "message")
        elif kinds == "others":
            query = query.where(inbox.c.kind != "message")
        with self._engine.begin() as conn:
            rows = conn.execute(
                query.order_by(inbox.c.id).limit(size).with_for_update(skip_locked=True)
            ).all()
            loaded = [(row, _load(row.payload)) for row in rows]
            # Contacts are locked in one global order (by sender), so processors sharing the
            # inbox never wait on each other in a cycle; each sender's rows keep id order.
            loaded.sort(key=lambda item: (_sender(item[0].kind, item[1]), item[0].id))
            self._queued = False
            began = time.monotonic()
            done = sum(self._process_row(conn, row, payload) for row, payload in loaded)
            claimed = self._claim_for_handover(conn) if self._queued else ()
        if claimed:  # committed: the replies queued above may leave now
            assert self._handover is not None
            self._handover.hand_over(claimed)
        if rows:
            self._row_seconds += 0.2 * ((time.monotonic() - began) / len(rows) - self._row_seconds)
        return len(rows), done, rows[-1].id if rows else after_id

    def _sized(self, size: int, backlog: bool = False) -> int:
        """``size`` cut to the rows that fit in a batch's time at the recent pace."""
        seconds = self._backlog_seconds if backlog else self._batch_seconds
        return max(1, min(size, int(seconds / max(self._row_seconds, 1e-6))))

    def _claim_for_handover(self, conn: Connection) -> Sequence[Any]:
        """The sender's claim of what this batch queued, in this transaction (see
        :meth:`WhatsAppOutboxWorker.claim_in`); nothing if it fails: the sender's own claim
        then finds the rows, a moment later."""
        if self._handover is None:
            return ()
        try:
            with conn.begin_nested():
                return self._handover.claim_in(conn, self._clock())
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            logger.warning("claim for the sender failed, left to it: %s", _reason(exc))
            return ()

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
        conn.execute(_DONE, {"row_id": row.id, "at": now, "tries": row.attempts + 1})
        return True

    def _dispatch(self, conn: Connection, row: Row[Any], payload: _Payload, now: datetime) -> None:
        if isinstance(payload, ValueError):
            raise payload
        if row.kind == "message":
            self._apply_message(conn, row, payload, now)
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

    def _apply_message(
        self, conn: Connection, row: Row[Any], payload: dict[str, Any], now: datetime
    ) -> None:
        message = _parsers(row.provider)[0](payload)
        waba = payload.get("waba_id")
        if waba and (row.account_id, waba) not in self._wabas_known:
            # Template, quality and account updates name only the WABA: learn its account
            # from the messages, once per process.
            learn_waba(conn, row.account_id, str(waba))
            self._wabas_known.add((row.account_id, waba))
        outcome = handle_message(
            conn,
            account_id=row.account_id,
            message=message,
            raw=payload["message"],
            now=now,
            message_activity=self._settings.crm_message_activity,
        )
        # A duplicate changed nothing, so there is nothing new for rules either; a number
        # change notice is WhatsApp speaking, not the customer.
        if outcome.message_id is None:
            return
        self._fed_downstream = self._queued = True  # the contact's CRM change, maybe a reply
        if message.type is MessageType.SYSTEM:
            return
        if not message.phone_number_id and self._settings.whatsapp_phone_number_id:
            # Replies leave from the number written to; the configured one if the event
            # did not say (rules otherwise use the account's first number).
            message = replace(message, phone_number_id=self._settings.whatsapp_phone_number_id)
        self._run_rules(
            conn,
            row,
            now,
            lambda: self.rules.on_message(
                conn,
                account_id=row.account_id,
                contact_id=outcome.contact_id,
                message=message,
                message_row_id=outcome.message_id,
                now=now,
                opened_ticket_id=outcome.ticket_id,
                contact_row=outcome.contact,
                new_contact=outcome.new_contact,
            ),
        )

    def _run_rules(
        self, conn: Connection, row: Row[Any], now: datetime, run: Callable[[], object]
    ) -> None:
        """``run`` the rules in a savepoint; a rule that fails is rolled back and recorded,
        and the row's own effects stay."""
        try:
            with conn.begin_nested():
                run()
        except DBAPIError as exc:
            if not isinstance(exc, IntegrityError | DataError) or exc.connection_invalidated:
                raise _StoreFailure(row.id, exc) from exc
            self._rules_failed(conn, row, now, exc)
        except Exception as exc:
            self._rules_failed(conn, row, now, exc)

    def _rules_failed(
        self, conn: Connection, row: Row[Any], now: datetime, exc: BaseException
    ) -> None:
        reason = _reason(exc)
        logger.error("inbox row %s (%s): rules failed, event kept: %s", row.id, row.kind, reason)
        held = QuarantineRow(
            row.account_id, RULES_QUARANTINE_SOURCE, reason, _quarantined(row), now
        )
        insert_quarantine_rows(conn, [held])

    def _apply_status(
        self, conn: Connection, row: Row[Any], payload: dict[str, Any], now: datetime
    ) -> None:
        update = _parsers(row.provider)[1](payload)
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
        if self._settings.crm_message_activity:
            # The first status creates the message's CRM activity, later ones update it; the
            # outbox merges them (never urgent, so a receipt wakes nothing).
            queue_outbound_activity(conn, account_id=row.account_id, message_id=found.id, now=now)
        if new is DeliveryStatus.FAILED:
            # Fed downstream: the failure's CRM changes, and maybe a send queued below or by
            # the rules, claimed for the sender before this batch commits.
            self._fed_downstream = self._queued = True
            # Refused after acceptance because the 24 h window had closed (Meta 131047,
            # Twilio 63016): the send's template fallback goes out as a message of its own.
            queue_late_fallback(
                conn,
                account_id=row.account_id,
                message_id=found.id,
                provider=row.provider,
                code=update.errors[0].get("code") if update.errors else None,
                now=now,
            )
            self._run_rules(
                conn,
                row,
                now,
                lambda: self.rules.on_status(
                    conn, account_id=row.account_id, status=update, now=now
                ),
            )

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
    # Meta: "from" / "from_user_id"; Twilio: its form's "From" ("whatsapp:+E164").
    return str(message.get("from") or message.get("from_user_id") or message.get("From") or "")


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
