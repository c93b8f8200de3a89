"""The WhatsApp outbox records what each row came to a few rows per transaction
(:class:`wacrm.workers.whatsapp_queue.Outcomes`), not one transaction per send."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, select
from whatsapp_support import (
    ALICE,
    Clock,
    Graph,
    add_contact,
    add_outbound,
    graph_error,
    make_sandbox,
    make_worker,
    message_row,
    outbox_row,
    over_asgi,
)

from wacrm.store.schema import wa_outbox
from wacrm.whatsapp.meta_bodies import text_message
from wacrm.workers import whatsapp_queue as queue


def _count_transactions(engine: Engine) -> list[int]:
    began: list[int] = []

    def on_begin(_conn: Connection) -> None:
        began.append(1)

    event.listen(engine, "begin", on_begin)
    return began


def test_given_five_due_rows_when_processed_then_sent_and_recorded_in_one_transaction(
    engine: Engine, account_id: int
) -> None:
    clock = Clock()
    alice = add_contact(engine, account_id, ALICE, clock.now - timedelta(hours=1))
    rows = [
        add_outbound(
            engine, account_id, text_message(ALICE, f"#{i}"), at=clock.now, contact_id=alice
        )
        for i in range(5)
    ]
    sandbox = make_sandbox(clock)
    worker = make_worker(engine, clock, over_asgi(sandbox))
    began = _count_transactions(engine)

    assert worker.process_due() == 5

    assert len(sandbox.sent) == 5
    assert len(began) == 2  # the claim, then every outcome together (was: 1 + 5)
    for (message_id, outbox_id), sent in zip(rows, sandbox.sent, strict=True):
        assert message_row(engine, message_id).provider_message_id == sent.wamid
        assert outbox_row(engine, outbox_id).state == "sent"


def test_given_sends_refused_for_good_when_processed_then_failures_recorded_together(
    engine: Engine, account_id: int
) -> None:
    clock = Clock()
    alice = add_contact(engine, account_id, ALICE, clock.now - timedelta(hours=1))
    rows = [
        add_outbound(engine, account_id, text_message(ALICE, "x"), at=clock.now, contact_id=alice)
        for _ in range(3)
    ]
    graph = Graph(*[graph_error(131026)] * 3)
    worker = make_worker(engine, clock, graph.client())
    began = _count_transactions(engine)

    worker.process_due()

    assert len(began) == 2
    for message_id, outbox_id in rows:
        assert outbox_row(engine, outbox_id).state == "failed"
        assert message_row(engine, message_id).status == "failed"


def test_given_one_write_failing_when_flushed_then_the_others_are_still_recorded(
    engine: Engine, account_id: int
) -> None:
    clock = Clock()
    ids = [
        add_outbound(engine, account_id, text_message(ALICE, "x"), at=clock.now, state="sending")[1]
        for _ in range(3)
    ]
    jobs = queue.claim(engine, clock.now, limit=10, lease=timedelta(seconds=60), skip_numbers=[])
    outcomes = queue.Outcomes(engine, max_count=100, max_seconds=60.0)

    def broken(_conn: Connection) -> None:
        raise RuntimeError("a write that cannot be made")

    outcomes.add(jobs[0].id, lambda conn: queue.release_in(conn, jobs[0], clock.now))
    outcomes.add(jobs[1].id, broken)
    outcomes.add(jobs[2].id, lambda conn: queue.release_in(conn, jobs[2], clock.now))
    assert len(outcomes) == 3
    outcomes.flush()

    assert len(outcomes) == 0
    with engine.connect() as conn:
        states = dict(conn.execute(select(wa_outbox.c.id, wa_outbox.c.state)).all())
    assert [states[i] for i in ids] == ["pending", "sending", "pending"]


@pytest.mark.parametrize(
    ("count", "age", "flushed"), [(2, 0.0, False), (3, 0.0, True), (2, 0.5, True)]
)
def test_given_waiting_writes_when_count_or_age_reached_then_committed(
    engine: Engine, account_id: int, count: int, age: float, flushed: bool
) -> None:
    clock = Clock()
    now = [0.0]
    _, outbox_id = add_outbound(
        engine, account_id, text_message(ALICE, "x"), at=clock.now, state="sending"
    )
    (job,) = queue.claim(engine, clock.now, limit=1, lease=timedelta(seconds=60), skip_numbers=[])
    outcomes = queue.Outcomes(engine, max_count=3, max_seconds=0.5, monotonic=lambda: now[0])
    written: list[Any] = []
    for _ in range(count - 1):
        outcomes.add(job.id, written.append)
    now[0] += age
    outcomes.add(job.id, lambda conn: queue.release_in(conn, job, clock.now))

    assert (len(outcomes) == 0) is flushed
    assert (outbox_row(engine, outbox_id).state == "pending") is flushed
