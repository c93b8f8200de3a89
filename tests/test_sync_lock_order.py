"""The sync loop and the inbox processor sharing contacts and CRM outbox rows on PostgreSQL.

The inbox processor locks a contact, then merges into its pending outbox row, for several
senders per transaction. The sync side, recording what the CRM confirmed, touches the same
rows: the outbox row (deleted or rescheduled) and the contact (its ``crm_id``). Each test
interleaves the two on two connections, step by step, at the point where opposite lock
orders deadlock, and asserts that both commit, nothing was aborted as a deadlock (40P01),
and the outcome is right: the CRM's id kept, the change that arrived in flight still pending.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from conftest import PHONE_NUMBER_ID
from sqlalchemy import Engine, event, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from test_sync_fakes import FakeConnector

from wacrm.model import InboundMessage, MessageType
from wacrm.store.accounts import ensure_account
from wacrm.store.outbox import enqueue_crm_change
from wacrm.store.schema import contacts, crm_outbox
from wacrm.sync import outcomes
from wacrm.sync.transactions import is_transient, run_transaction
from wacrm.workers import crm_outbox as crm_outbox_worker
from wacrm.workers.crm_outbox import CrmOutboxWorker
from wacrm.workers.inbound import handle_message

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
WAIT = 10.0  # seconds any step waits for the other side before giving up
SYNC, INBOX = "sync-side", "inbox-side"


def _message(wa_id: str, wamid: str) -> InboundMessage:
    return InboundMessage(
        provider="meta",
        provider_message_id=wamid,
        phone_number_id=PHONE_NUMBER_ID,
        from_wa_id=wa_id,
        from_user_id=None,
        profile_name=None,
        timestamp=T0 + timedelta(minutes=1),
        type=MessageType.REACTION,  # no ticket: only the contact and its outbox row
        raw_type="reaction",
    )


def _contact_with_pending_change(engine: Engine, account_id: int, phone: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            contacts.insert().values(
                account_id=account_id,
                phone=phone,
                wa_id=phone[1:],
                unread_count=0,
                tags="[]",
                created_at=T0,
                updated_at=T0,
            )
        )
        enqueue_crm_change(
            conn,
            account_id=account_id,
            object="contacts",
            record_key=phone,
            properties={"phone": phone, "unread_count": 0},
            now=T0,
        )


class Recorder:
    """Statement hooks per thread, and every deadlock PostgreSQL reported on any of them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.deadlocks: list[str] = []
        self.errors: dict[str, BaseException] = {}
        self.before: Callable[[str], None] = lambda _statement: None
        self.after: Callable[[str], None] = lambda _statement: None
        self.committing: Callable[[], None] = lambda: None

    def install(self) -> None:
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        event.listen(self.engine, "commit", self._commit)
        event.listen(self.engine, "handle_error", self._error)

    def remove(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)
        event.remove(self.engine, "commit", self._commit)
        event.remove(self.engine, "handle_error", self._error)

    def _before(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.before(statement)

    def _after(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.after(statement)

    def _commit(self, _conn: Any) -> None:
        self.committing()

    def _error(self, context: Any) -> None:
        orig = context.original_exception
        if getattr(orig, "sqlstate", None) == "40P01":
            self.deadlocks.append(f"{threading.current_thread().name}: {orig}")

    def run(self, name: str, work: Callable[[], object]) -> threading.Thread:
        def target() -> None:
            try:
                work()
            except BaseException as exc:  # reported by the test, not lost in the thread
                self.errors[name] = exc

        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread


@pytest.fixture
def recorder(pg_engine: Engine) -> Iterator[Recorder]:
    rec = Recorder(pg_engine)
    rec.install()
    yield rec
    rec.remove()


def _on(name: str) -> bool:
    return threading.current_thread().name == name


def _lock_waiters(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def _wait_for_lock_waiter(engine: Engine) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and _lock_waiters(engine) == 0:
        time.sleep(0.005)


def _finish(recorder: Recorder, *threads: threading.Thread) -> None:
    for thread in threads:
        thread.join(3 * WAIT)
        assert not thread.is_alive(), f"{thread.name} is still blocked"
    assert recorder.deadlocks == []
    assert recorder.errors == {}


def _crm_id(engine: Engine, phone: str) -> str | None:
    with engine.connect() as conn:
        found = conn.execute(select(contacts.c.crm_id).where(contacts.c.phone == phone))
        return found.scalar_one()  # type: ignore[no-any-return]


def _pending(engine: Engine, key: str) -> dict[str, Any]:
    with engine.connect() as conn:
        (payload,) = conn.execute(
            select(crm_outbox.c.payload).where(
                crm_outbox.c.record_key == key, crm_outbox.c.state == "pending"
            )
        ).scalars()
    return orjson.loads(payload)["properties"]  # type: ignore[no-any-return]


def test_given_sync_settling_an_outbox_row_when_inbox_locks_its_contact_then_both_commit(
    pg_engine: Engine, recorder: Recorder
) -> None:
    account_id = ensure_account(pg_engine, "default")
    phone = "+15550001111"
    _contact_with_pending_change(pg_engine, account_id, phone)
    connector = FakeConnector()
    worker = CrmOutboxWorker(pg_engine, lambda _account: connector, clock=lambda: T0)
    sync_holds_outbox, inbox_holds_contact = threading.Event(), threading.Event()
    settled = {"outbox": False, "paused": False}

    # The sync side, once it has written an outbox row, stops before its next statement (or
    # its commit) until the inbox side holds the contact.
    def pause() -> None:
        if _on(SYNC) and settled["outbox"] and not settled["paused"]:
            settled["paused"] = True
            sync_holds_outbox.set()
            inbox_holds_contact.wait(WAIT)

    def after(statement: str) -> None:
        if _on(SYNC) and statement.lstrip().upper().startswith("DELETE FROM CRM_OUTBOX"):
            settled["outbox"] = True

    def before(statement: str) -> None:
        if _on(INBOX) and "FROM crm_outbox" in statement:
            inbox_holds_contact.set()  # the contact is locked and updated by now
        pause()

    recorder.before, recorder.after, recorder.committing = before, after, pause

    def inbox_side() -> None:
        assert sync_holds_outbox.wait(WAIT), "the sync side never settled the outbox row"
        with pg_engine.begin() as conn:
            handle_message(
                conn,
                account_id=account_id,
                message=_message(phone[1:], "wamid.in-flight"),
                raw={"id": "wamid.in-flight"},
                now=T0 + timedelta(minutes=1),
            )

    threads = [
        recorder.run(SYNC, lambda: worker.flush(force=True)),
        recorder.run(INBOX, inbox_side),
    ]
    _finish(recorder, *threads)

    assert settled["paused"]
    assert _crm_id(pg_engine, phone) == f"crm-{phone}"
    assert worker.last_stats.confirmed == 1
    assert _pending(pg_engine, phone)["unread_count"] == 0  # a reaction: no unread
    assert "last_inbound_at" in _pending(pg_engine, phone)


def test_given_inbox_holding_one_contact_when_sync_settles_a_batch_of_two_then_both_commit(
    pg_engine: Engine, recorder: Recorder
) -> None:
    account_id = ensure_account(pg_engine, "default")
    first, second = "+15550002222", "+15550003333"
    for phone in (first, second):
        _contact_with_pending_change(pg_engine, account_id, phone)
    connector = FakeConnector()
    worker = CrmOutboxWorker(pg_engine, lambda _account: connector, clock=lambda: T0)
    inbox_holds_second = threading.Event()

    def inbox_side() -> None:
        # Like a processor batch sorted by sender: the second contact, then the first.
        with pg_engine.begin() as conn:
            for phone, wamid in ((second, "wamid.b"), (first, "wamid.a")):
                handle_message(
                    conn,
                    account_id=account_id,
                    message=_message(phone[1:], wamid),
                    raw={"id": wamid},
                    now=T0 + timedelta(minutes=1),
                )
                if phone == second:
                    inbox_holds_second.set()
                    _wait_for_lock_waiter(pg_engine)  # the sync side is waiting on us now

    def sync_side() -> None:
        assert inbox_holds_second.wait(WAIT), "the inbox side never locked the contact"
        worker.flush(force=True)

    threads = [recorder.run(INBOX, inbox_side), recorder.run(SYNC, sync_side)]
    _finish(recorder, *threads)

    assert connector.keys_written("contacts") == [first, second]
    assert [_crm_id(pg_engine, p) for p in (first, second)] == [f"crm-{first}", f"crm-{second}"]
    # Both rows took the inbox's change while their batch was in flight: still pending.
    assert ["last_inbound_at" in _pending(pg_engine, p) for p in (first, second)] == [True, True]


class _Refused(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"refused with {sqlstate}")
        self.sqlstate = sqlstate


def _store_error(sqlstate: str) -> DBAPIError:
    return OperationalError("UPDATE contacts ...", {}, _Refused(sqlstate))


@pytest.mark.parametrize("sqlstate", ["40P01", "40001", "55P03"])
def test_given_deadlock_or_serialization_failure_when_writing_then_transaction_retried(
    engine: Engine, sqlstate: str
) -> None:
    account_id = ensure_account(engine, "default")
    tries: list[int] = []

    def work(conn: Any) -> int:
        tries.append(1)
        conn.execute(
            contacts.insert().values(
                account_id=account_id,
                phone=f"+1555000{len(tries):04d}",
                created_at=T0,
                updated_at=T0,
            )
        )
        if len(tries) == 1:
            raise _store_error(sqlstate)
        return len(tries)

    assert run_transaction(engine, work) == 2
    with engine.connect() as conn:
        # The failed attempt was rolled back as a whole.
        assert list(conn.execute(select(contacts.c.phone)).scalars()) == ["+15550000002"]


def test_given_other_store_error_when_writing_then_raised_at_once(engine: Engine) -> None:
    tries: list[int] = []

    def work(_conn: Any) -> None:
        tries.append(1)
        raise _store_error("23505")

    with pytest.raises(OperationalError):
        run_transaction(engine, work)
    assert tries == [1]
    assert not is_transient(_store_error("23505"))
    assert is_transient(_store_error("40P01"))


def test_given_deadlock_every_time_when_writing_then_gives_up_after_bounded_tries(
    engine: Engine,
) -> None:
    tries: list[int] = []

    def work(_conn: Any) -> None:
        tries.append(1)
        raise _store_error("40P01")

    with pytest.raises(OperationalError):
        run_transaction(engine, work, attempts=3)
    assert tries == [1, 1, 1]


def test_given_store_refusing_one_account_when_flushing_then_others_flushed_and_rows_kept(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy, calm = ensure_account(engine, "busy"), ensure_account(engine, "calm")
    _contact_with_pending_change(engine, busy, "+15550004444")
    _contact_with_pending_change(engine, calm, "+15550005555")
    real = outcomes.record_outcomes

    def refusing(engine_: Engine, account_id: int, *args: Any, **kwargs: Any) -> None:
        if account_id == busy:
            raise _store_error("40P01")
        real(engine_, account_id, *args, **kwargs)

    monkeypatch.setattr(crm_outbox_worker, "record_outcomes", refusing)
    connector = FakeConnector()
    worker = CrmOutboxWorker(engine, lambda _account: connector, clock=lambda: T0)

    assert worker.flush(force=True) == 1

    assert worker.last_stats.call_errors == [f"account {busy}: store busy (_Refused)"]
    assert _crm_id(engine, "+15550005555") == "crm-+15550005555"
    assert _pending(engine, "+15550004444") == {"phone": "+15550004444", "unread_count": 0}
    monkeypatch.setattr(crm_outbox_worker, "record_outcomes", real)
    assert worker.flush(force=True) == 1  # the next flush sends it again, and records it
    assert _crm_id(engine, "+15550004444") == "crm-+15550004444"
