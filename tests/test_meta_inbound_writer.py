"""The inbox's group-commit writer on the webhook hot path: chunked inserts that ignore
redeliveries, waiters resolved only after the commit, and a stalled writer bounded."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from wacrm.store.accounts import ensure_account
from wacrm.store.inbox import GroupCommitWriter, InboxRow, insert_inbox_rows
from wacrm.store.schema import inbox

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def rows(account_id: int, count: int, prefix: str = "wamid.w") -> list[InboxRow]:
    return [
        InboxRow(account_id, "meta", "message", f"{prefix}{i}", '{"message": {}}', NOW)
        for i in range(count)
    ]


def stored(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(inbox).order_by(inbox.c.id)))


def test_given_301_rows_with_redeliveries_when_inserted_then_each_stored_once(
    engine: Engine, account_id: int
) -> None:
    # 301 = 256 + 16 + 16 + 4 + 4 + 4 + 1: every chunk size is used.
    batch = rows(account_id, 301)

    with engine.begin() as conn:
        insert_inbox_rows(conn, batch)
        insert_inbox_rows(conn, batch[:20])  # a redelivery in the same transaction

    with engine.begin() as conn:
        insert_inbox_rows(conn, batch[290:])  # and in a later one

    found = stored(engine)
    assert len(found) == 301
    assert {r.event_id for r in found} == {r.event_id for r in batch}
    first = found[0]
    assert (first.state, first.attempts, first.received_at) == ("pending", 0, NOW)


async def test_given_async_submissions_when_committed_then_resolved_after_rows_exist(
    engine: Engine, account_id: int
) -> None:
    writer = GroupCommitWriter(engine)
    writer.start()
    try:
        waiters = [
            writer.submit_async(rows(account_id, 2, f"wamid.a{i}."), timeout=5) for i in range(50)
        ]
        await asyncio.gather(*waiters)
        with engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(inbox)).scalar()
    finally:
        writer.stop()

    assert count == 100
    assert 1 <= writer.commits <= 50  # grouped


class _StalledEngine:
    """An engine whose transactions block until released: a store that hangs."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def raw_connection(self) -> Any:
        self.release.wait(10)
        raise RuntimeError("store was stalled")

    begin = raw_connection


async def test_given_stalled_store_when_waiting_then_timeout_error_not_a_hang() -> None:
    stalled = _StalledEngine()
    writer = GroupCommitWriter(stalled)  # type: ignore[arg-type]
    writer.start()
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError, match=r"did not finish within 0\.3 s"):
            await writer.submit_async(rows(1, 1), timeout=0.3)
        waited = asyncio.get_running_loop().time() - started
    finally:
        stalled.release.set()
        writer.stop()

    assert 0.3 <= waited < 2.0


async def test_given_cancelled_waiter_when_group_commits_then_rows_written_and_writer_lives(
    engine: Engine, account_id: int
) -> None:
    writer = GroupCommitWriter(engine)
    writer.start()
    try:
        gave_up = writer.submit_async(rows(account_id, 1, "wamid.gaveup"))
        gave_up.cancel()
        await writer.submit_async(rows(account_id, 1, "wamid.after"), timeout=5)
        await asyncio.to_thread(writer.submit(rows(account_id, 1, "wamid.sync")).result, 5)
    finally:
        writer.stop()

    assert {r.event_id for r in stored(engine)} == {"wamid.gaveup0", "wamid.after0", "wamid.sync0"}


async def test_given_commit_failure_when_waiting_then_every_waiter_of_the_group_fails(
    engine: Engine, account_id: int
) -> None:
    bad = InboxRow(account_id + 999, "meta", "message", "wamid.nofk", "{}", NOW)  # no account
    writer = GroupCommitWriter(engine)
    writer.start()
    try:
        outcomes = await asyncio.gather(
            writer.submit_async([bad], timeout=5),
            return_exceptions=True,
        )
    finally:
        writer.stop()

    assert isinstance(outcomes[0], Exception)
    assert stored(engine) == []


async def test_given_writer_connection_killed_when_next_groups_come_then_it_reconnects(
    pg_engine: Engine,
) -> None:
    # PostgreSQL only: it needs a server whose session can be terminated.
    engine = pg_engine
    account_id = ensure_account(engine, "default")
    from sqlalchemy import text

    writer = GroupCommitWriter(engine)
    writer.start()
    try:
        await writer.submit_async(rows(account_id, 1, "wamid.before"), timeout=5)
        # Only the writer's own session: the test database is shared with other test runs.
        assert writer._raw is not None
        pid = writer._raw.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        outcomes = []
        for i in range(3):
            try:
                await writer.submit_async(rows(account_id, 1, f"wamid.after{i}."), timeout=5)
                outcomes.append("ok")
            except Exception:
                outcomes.append("failed")  # answered 503: the provider retries
    finally:
        writer.stop()

    assert outcomes[-1] == "ok" and outcomes.count("failed") <= 1
    ids = {r.event_id for r in stored(engine)}
    assert {"wamid.before0", "wamid.after2.0"} <= ids


async def test_given_on_commit_when_groups_committed_then_called_once_per_group_with_rows(
    engine: Engine, account_id: int
) -> None:
    from wacrm.store.inbox import QuarantineRow

    calls: list[int] = []
    writer = GroupCommitWriter(engine, on_commit=lambda: calls.append(len(stored(engine))))
    writer.start()
    try:
        await asyncio.gather(
            *(
                writer.submit_async(rows(account_id, 1, f"wamid.c{i}."), timeout=5)
                for i in range(40)
            )
        )
        groups = writer.commits
        lone = QuarantineRow(account_id, "webhook:meta", "no id", "{}", NOW)
        await writer.submit_async([], [lone], timeout=5)  # only quarantined: nobody to wake
    finally:
        writer.stop()

    assert 1 <= len(calls) == groups < 40  # per group, not per webhook
    assert calls[-1] == 40  # called after the rows were committed, never before
    assert writer.commits == groups + 1
