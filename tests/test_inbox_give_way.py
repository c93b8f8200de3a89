"""The inbox processor gives way to ingest: batches sized to a short transaction, and a
bounded share of the time while webhooks are being stored in a burst."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, event
from test_inbox_processor import (
    BOB,
    Clock,
    count,
    from_,
    make_processor,
    store,
    text,
)

from wacrm.store.ingest_gauge import IngestGauge, ingest_gauge
from wacrm.store.schema import inbox, messages


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FixedGauge(IngestGauge):
    """A gauge reading a fixed ingest rate."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self._fixed = rate

    def rate(self) -> float:
        return self._fixed


@pytest.fixture
def clock() -> Clock:
    return Clock()


def store_messages(engine: Engine, account_id: int, n: int) -> None:
    for i in range(n):
        store(engine, account_id, from_(BOB, "Bob", text(f"wamid.gw{i}", f"hello {i}", sender=BOB)))


def count_commits(engine: Engine) -> list[int]:
    commits = [0]

    def on_commit(_conn: Any) -> None:
        commits[0] += 1

    event.listen(engine, "commit", on_commit)
    return commits


def test_given_commits_in_window_when_rate_read_then_rows_per_second_of_recent_ones() -> None:
    clock = FakeClock()
    gauge = IngestGauge(window=0.5, clock=clock)
    gauge.record(300)
    clock.now += 0.25
    gauge.record(200)
    assert gauge.rate() == 1000.0  # 500 rows in the last half second
    clock.now += 0.3  # the first group is now older than the window
    assert gauge.rate() == 400.0
    clock.now += 1.0
    assert gauge.rate() == 0.0


def test_given_one_engine_when_gauge_looked_up_twice_then_same_gauge(engine: Engine) -> None:
    assert ingest_gauge(engine) is ingest_gauge(engine)


def test_given_no_time_for_a_batch_when_processed_then_one_row_per_transaction(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    store_messages(engine, account_id, 6)
    processor = make_processor(engine, clock, batch_seconds=0.0)
    commits = count_commits(engine)
    assert processor.process_pending(kinds="messages") == 6
    assert count(engine, messages, messages.c.direction == "in") == 6
    assert commits[0] >= 6  # never several rows in one transaction


def test_given_time_for_a_batch_when_processed_then_rows_share_a_transaction(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    store_messages(engine, account_id, 6)
    processor = make_processor(engine, clock, batch_seconds=10.0)
    commits = count_commits(engine)
    assert processor.process_pending(kinds="messages") == 6
    assert count(engine, inbox, inbox.c.state == "done") == 6
    assert commits[0] <= 2  # the batch, and the final look that finds nothing


def test_given_ingest_burst_when_processing_then_processor_rests_between_batches(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    store_messages(engine, account_id, 3)
    processor = make_processor(
        engine, clock, burst_rate=1000.0, burst_share=0.1, gauge=FixedGauge(5000.0)
    )
    assert processor.process_pending(kinds="messages") == 3
    assert count(engine, messages, messages.c.direction == "in") == 3  # slowed, not stopped
    assert processor.rested > 0.0


def test_given_quiet_ingest_when_processing_then_processor_never_rests(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    store_messages(engine, account_id, 3)
    processor = make_processor(engine, clock, burst_rate=1000.0, gauge=FixedGauge(999.0))
    assert processor.process_pending(kinds="messages") == 3
    assert processor.rested == 0.0


def test_given_rates_when_pause_computed_then_share_shrinks_in_proportion_to_ingest() -> None:
    from wacrm.workers.inbox import burst_pause

    assert burst_pause(0.01, 999.0, 1000.0, 0.1) == 0.0  # not a burst: no rest
    at_threshold = burst_pause(0.01, 1000.0, 1000.0, 0.1)
    assert at_threshold == pytest.approx(0.09)  # 10 ms of work in 100 ms
    ten_times = burst_pause(0.01, 10_000.0, 1000.0, 0.1)
    assert ten_times == pytest.approx(0.99)  # 1 % at ten times the rate
    assert burst_pause(0.05, 100_000.0, 1000.0, 0.1) == 1.0  # capped: progress continues


def test_given_store_when_backlog_drains_then_batches_sized_for_its_locking(
    engine: Engine, clock: Clock
) -> None:
    # SQLite: ~10 ms always, the inbox writer waits for its one write lock. PostgreSQL: rows
    # are locked, not the store, so while a backlog drains batches grow to ~100 ms and share
    # their claim and commit; not before, when they would hold new messages back.
    processor = make_processor(engine, clock)

    steady, backlog = processor._sized(500), processor._sized(500, backlog=True)

    assert steady == 5  # at the starting pace, 2 ms a row
    assert backlog == {"sqlite": 5, "postgresql": 50}[engine.dialect.name]


def test_given_backlog_when_drained_then_batches_grow_only_after_full_ones(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    store_messages(engine, account_id, 40)
    processor = make_processor(engine, clock)
    sizes: list[int] = []
    real = processor._process_batch

    def batch(after_id: int, size: int, kinds: Any) -> tuple[int, int, int]:
        sizes.append(size)
        try:
            return real(after_id, size, kinds)
        finally:
            processor._row_seconds = 0.002  # the pace held, so sizes show only the mode

    processor._process_batch = batch  # type: ignore[method-assign]
    processor._row_seconds = 0.002

    processor.process_pending(kinds="messages")

    grown = {"sqlite": 5, "postgresql": 50}[engine.dialect.name]
    assert sizes[:3] == [5, 5, 5]  # short until three came back full
    assert max(sizes[3:]) == grown
