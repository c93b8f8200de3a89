"""CrmOutboxWorker: batches, per-record results, retries, dead letters, ordering, triggers."""

from __future__ import annotations

import asyncio
import random
import threading
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, func, select
from test_sync_fakes import FakeClock, FakeConnector

from wacrm.connectors.base import ConnectorError
from wacrm.store.outbox import enqueue_crm_change
from wacrm.store.schema import contacts, crm_outbox
from wacrm.sync.trigger import TriggerPolicy
from wacrm.workers.crm_outbox import CrmOutboxWorker


def _enqueue(engine: Engine, clock: FakeClock, account_id: int, n: int, **kw: object) -> None:
    obj = str(kw.pop("object", "contacts"))
    with engine.begin() as conn:
        for i in range(n):
            enqueue_crm_change(
                conn,
                account_id=account_id,
                object=obj,
                record_key=f"+1555000{i:04d}",
                properties={"unread_count": i},
                now=clock(),
                **kw,  # type: ignore[arg-type]
            )


def _mirror(engine: Engine, clock: FakeClock, account_id: int, n: int) -> None:
    """``n`` contacts already in the mirror: the denominator of the changed share."""
    with engine.begin() as conn:
        conn.execute(
            contacts.insert(),
            [
                {
                    "account_id": account_id,
                    "phone": f"+1666{i:07d}",
                    "created_at": clock(),
                    "updated_at": clock(),
                }
                for i in range(n)
            ],
        )


def _rows(engine: Engine, **where: object) -> list[dict[str, Any]]:
    query = select(crm_outbox)
    for col, value in where.items():
        query = query.where(crm_outbox.c[col] == value)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query.order_by(crm_outbox.c.id))]


def _worker(engine: Engine, crm: FakeConnector, clock: FakeClock, **kw: object) -> CrmOutboxWorker:
    return CrmOutboxWorker(
        engine,
        lambda _acc: crm,
        clock=clock,
        sleep=clock.async_sleep,
        rng=random.Random(7),
        **kw,  # type: ignore[arg-type]
    )


def test_given_250_changes_when_flushed_then_three_batches_of_at_most_100_and_outbox_empty(
    engine: Engine, account_id: int
) -> None:
    clock, crm = FakeClock(), FakeConnector()
    _enqueue(engine, clock, account_id, 250)

    confirmed = _worker(engine, crm, clock).flush(force=True)

    assert confirmed == 250
    assert [len(c.records) for c in crm.calls] == [100, 100, 50]
    assert sorted(crm.keys_written("contacts")) == sorted(f"+1555000{i:04d}" for i in range(250))
    assert _rows(engine) == []


def test_given_ten_updates_to_one_contact_when_flushed_then_one_write_with_latest_values(
    engine: Engine, account_id: int
) -> None:
    clock, crm = FakeClock(), FakeConnector()
    with engine.begin() as conn:
        for i in range(10):
            enqueue_crm_change(
                conn,
                account_id=account_id,
                object="contacts",
                record_key="+15550001",
                properties={"unread_count": i, f"f{i % 2}": i},
                now=clock(),
            )

    _worker(engine, crm, clock).flush(force=True)

    assert len(crm.calls) == 1 and len(crm.calls[0].records) == 1
    assert crm.calls[0].records[0].properties == {"unread_count": 9, "f0": 8, "f1": 9}


def test_given_three_retryable_failures_when_flushed_then_only_those_three_are_retried_later(
    engine: Engine, account_id: int
) -> None:
    clock, crm = FakeClock(), FakeConnector(fail_once=True)
    _enqueue(engine, clock, account_id, 10)
    failing = {"+15550000002", "+15550000005", "+15550000007"}
    crm.failures = {k: ("RATE_LIMIT", True) for k in failing}
    worker = _worker(engine, crm, clock)

    assert worker.flush(force=True) == 7
    left = _rows(engine)
    assert {r["record_key"] for r in left} == failing
    assert all(r["attempts"] == 1 and r["next_attempt_at"] > clock() for r in left)
    assert all(r["state"] == "pending" and r["error_code"] == "RATE_LIMIT" for r in left)

    assert worker.flush(force=True) == 0  # not due yet: nothing is re-sent early
    assert len(crm.calls) == 1

    clock.advance(3600)
    assert worker.flush(force=True) == 3
    assert sorted(r.key for r in crm.calls[-1].records) == sorted(failing)
    assert _rows(engine) == []


def test_given_a_permanent_failure_when_flushed_then_dead_letter_with_crm_code_and_message(
    engine: Engine, account_id: int
) -> None:
    clock, crm = FakeClock(), FakeConnector()
    _enqueue(engine, clock, account_id, 3)
    crm.failures = {"+15550000001": ("INVALID_OPTION", False)}

    assert _worker(engine, crm, clock).flush(force=True) == 2

    dead = _rows(engine, state="dead")
    assert len(dead) == 1
    assert dead[0]["record_key"] == "+15550000001"
    assert dead[0]["error_code"] == "INVALID_OPTION"
    assert dead[0]["last_error"] == "INVALID_OPTION for +15550000001"
    assert _rows(engine, state="pending") == []


def test_given_retryable_failures_past_the_attempt_bound_then_dead_lettered(
    engine: Engine, account_id: int
) -> None:
    clock, crm = FakeClock(), FakeConnector()
    _enqueue(engine, clock, account_id, 1)
    crm.failures = {"+15550000000": ("SERVER_ERROR", True)}
    worker = _worker(engine, crm, clock)

    for _ in range(12):
        worker.flush(force=True)
        clock.advance(3600)

    assert len(crm.calls) == 10  # RECORD_POLICY.max_attempts
    [row] = _rows(engine)
    assert row["state"] == "dead" and row["error_code"] == "SERVER_ERROR"


def test_given_an_urgent_ticket_when_flushed_without_force_then_its_contact_goes_first(
    engine: Engine, account_id: int
) -> None:
    clock, crm = FakeClock(), FakeConnector()
    trigger = TriggerPolicy(threshold=0.99)  # nothing but urgency may trigger this flush
    _mirror(engine, clock, account_id, 50)
    with engine.begin() as conn:
        enqueue_crm_change(
            conn,
            account_id=account_id,
            object="contacts",
            record_key="+15550001",
            properties={"unread_count": 1},
            now=clock(),
        )
        enqueue_crm_change(
            conn,
            account_id=account_id,
            object="tickets",
            record_key="wamid.1",
            properties={"subject": "Price?"},
            contact_key="+15550001",
            urgent=True,
            now=clock(),
        )

    sent = _worker(engine, crm, clock, trigger=trigger).flush()

    assert sent == 2
    assert [c.object for c in crm.calls] == ["contacts", "tickets"]
    assert crm.calls[1].records[0].contact_key == "+15550001"


def test_given_a_few_changes_under_the_threshold_then_they_wait_for_the_baseline(
    engine: Engine, account_id: int
) -> None:
    clock, crm = FakeClock(), FakeConnector()
    _mirror(engine, clock, account_id, 100)
    _enqueue(engine, clock, account_id, 4)  # 4 % < 5 %
    worker = _worker(engine, crm, clock)

    assert worker.flush() == 0 and crm.calls == []

    clock.advance(30 * 60)
    assert worker.flush() == 4


def test_given_changes_reaching_five_percent_then_sync_runs_at_once(
    engine: Engine, account_id: int
) -> None:
    clock, crm = FakeClock(), FakeConnector()
    _mirror(engine, clock, account_id, 100)
    _enqueue(engine, clock, account_id, 5)

    assert _worker(engine, crm, clock).flush() == 5


def test_given_150_changes_below_threshold_then_only_the_full_batch_is_sent(
    engine: Engine, account_id: int
) -> None:
    clock, crm = FakeClock(), FakeConnector()
    _mirror(engine, clock, account_id, 100)
    _enqueue(engine, clock, account_id, 150)
    worker = _worker(engine, crm, clock, trigger=TriggerPolicy(threshold=2.0))

    assert worker.flush() == 100
    assert len(_rows(engine)) == 50


def test_given_a_confirmed_contact_then_its_crm_id_is_stored_on_the_contact(
    engine: Engine, account_id: int
) -> None:
    clock, crm = FakeClock(), FakeConnector()
    with engine.begin() as conn:
        conn.execute(
            contacts.insert().values(
                account_id=account_id,
                phone="+15550000000",
                created_at=clock(),
                updated_at=clock(),
            )
        )
    _enqueue(engine, clock, account_id, 1)

    _worker(engine, crm, clock).flush(force=True)

    with engine.connect() as conn:
        assert conn.execute(select(contacts.c.crm_id)).scalar() == "crm-+15550000000"


def test_given_a_change_merged_while_in_flight_then_the_row_stays_for_the_next_batch(
    engine: Engine, account_id: int
) -> None:
    clock, crm = FakeClock(), FakeConnector()
    _enqueue(engine, clock, account_id, 1)

    def merge_newer() -> None:
        with engine.begin() as conn:
            enqueue_crm_change(
                conn,
                account_id=account_id,
                object="contacts",
                record_key="+15550000000",
                properties={"unread_count": 42},
                now=clock(),
            )

    crm.during_call = merge_newer
    worker = _worker(engine, crm, clock)

    assert worker.flush(force=True) == 0
    [row] = _rows(engine)
    assert orjson.loads(str(row["payload"]))["properties"] == {"unread_count": 42}

    worker.flush(force=True)
    assert crm.store[("contacts", "+15550000000")] == {"unread_count": 42}
    assert _rows(engine) == []


def test_given_a_503_for_the_whole_call_with_retry_after_then_rows_wait_that_long(
    engine: Engine, account_id: int
) -> None:
    clock, crm = FakeClock(), FakeConnector()
    _enqueue(engine, clock, account_id, 3)
    crm.raise_next = [ConnectorError("unavailable", code="503", retryable=True, retry_after=42)]

    _worker(engine, crm, clock).flush(force=True)

    rows = _rows(engine)
    assert len(rows) == 3
    assert all(r["next_attempt_at"] == clock() + timedelta(seconds=42) for r in rows)
    assert all(r["attempts"] == 1 and r["state"] == "pending" for r in rows)


def test_given_an_auth_failure_then_rows_are_held_not_dead_and_the_account_pauses(
    engine: Engine, account_id: int
) -> None:
    clock, crm = FakeClock(), FakeConnector()
    _enqueue(engine, clock, account_id, 150)
    crm.raise_next = [ConnectorError("token expired", code="401", retryable=False)]
    worker = _worker(engine, crm, clock)

    assert worker.flush(force=True) == 0
    assert len(crm.calls) == 1  # the second batch was not even tried
    assert all(r["state"] == "pending" and r["attempts"] == 0 for r in _rows(engine))

    clock.advance(60)
    worker.flush()
    assert len(crm.calls) == 1  # paused: a refused CRM is not hammered every poll


def test_given_a_ticket_whose_contact_is_backing_off_then_the_ticket_waits(
    engine: Engine, account_id: int
) -> None:
    clock, crm = FakeClock(), FakeConnector(fail_once=True)
    crm.failures = {"+15550001": ("RATE_LIMIT", True)}
    with engine.begin() as conn:
        enqueue_crm_change(
            conn,
            account_id=account_id,
            object="contacts",
            record_key="+15550001",
            properties={"unread_count": 1},
            now=clock(),
        )
        enqueue_crm_change(
            conn,
            account_id=account_id,
            object="tickets",
            record_key="wamid.1",
            properties={"subject": "Hi"},
            contact_key="+15550001",
            urgent=True,
            now=clock(),
        )
    worker = _worker(engine, crm, clock)

    worker.flush(force=True)
    assert [c.object for c in crm.calls] == ["contacts"]
    assert worker.last_stats.deferred == 1

    clock.advance(3600)
    worker.flush(force=True)
    assert [c.object for c in crm.calls] == ["contacts", "contacts", "tickets"]


async def test_given_a_running_worker_when_woken_then_urgent_work_is_sent_and_stop_ends_it(
    engine: Engine, account_id: int
) -> None:
    clock, crm = FakeClock(), FakeConnector()
    slept = asyncio.Event()

    async def sleep(seconds: float) -> None:
        slept.set()
        await asyncio.Event().wait()  # only a wake or stop ends the wait

    worker = CrmOutboxWorker(engine, lambda _acc: crm, clock=clock, sleep=sleep)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(slept.wait(), 10)
    with engine.begin() as conn:
        enqueue_crm_change(
            conn,
            account_id=account_id,
            object="tickets",
            record_key="wamid.9",
            properties={"subject": "Help"},
            urgent=True,
            now=clock(),
        )

    written = threading.Event()
    crm.during_call = written.set

    worker.wake()
    assert await asyncio.to_thread(written.wait, 10)
    stop.set()
    await asyncio.wait_for(task, 10)

    assert crm.keys_written("tickets") == ["wamid.9"]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(crm_outbox)).scalar() == 0
