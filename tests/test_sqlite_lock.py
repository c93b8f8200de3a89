"""SQLite transactions of one engine queue in arrival order and are handed over the moment the
one ahead ends, on every path to the file (SQLAlchemy's and a raw DBAPI connection's)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from wacrm.store import create_store_engine
from wacrm.store.sqlite_lock import FairLock, QueuedConnection


def _lock_of(engine: Engine) -> FairLock:
    raw = engine.raw_connection()
    try:
        dbapi = raw.dbapi_connection
        assert isinstance(dbapi, QueuedConnection)
        return dbapi.lock
    finally:
        raw.close()


@pytest.fixture
def store(tmp_path: Path) -> Engine:
    engine = create_store_engine(f"sqlite:///{tmp_path / 'lock.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    return engine


def test_given_waiters_when_lock_released_then_handed_over_in_arrival_order() -> None:
    lock = FairLock()
    assert lock.acquire(timeout=1)
    order: list[int] = []

    def wait_turn(n: int) -> None:
        assert lock.acquire(timeout=5)
        order.append(n)
        lock.release()

    threads = []
    for n in range(5):
        thread = threading.Thread(target=wait_turn, args=(n,))
        thread.start()
        threads.append(thread)
        time.sleep(0.02)  # let each queue up before the next

    lock.release()
    for thread in threads:
        thread.join(5)

    assert order == [0, 1, 2, 3, 4]
    assert not lock.held


def test_given_lock_held_when_waiter_times_out_then_it_gives_up_and_queue_stays_sound() -> None:
    lock = FairLock()
    assert lock.acquire(timeout=1)

    assert lock.acquire(timeout=0.05) is False

    lock.release()
    assert not lock.held
    assert lock.acquire(timeout=0.05)


@pytest.mark.parametrize("end", ["commit", "rollback", "close"])
def test_given_sqlalchemy_transaction_when_it_ends_then_queue_released(
    store: Engine, end: str
) -> None:
    lock = _lock_of(store)
    conn = store.connect()
    transaction = conn.begin()
    conn.execute(text("INSERT INTO t VALUES (1)"))
    assert lock.held

    if end == "commit":
        transaction.commit()
    elif end == "rollback":
        transaction.rollback()
    conn.close()

    assert not lock.held


def test_given_savepoint_rolled_back_when_transaction_goes_on_then_queue_still_held(
    store: Engine,
) -> None:
    lock = _lock_of(store)
    with store.begin() as conn:
        nested = conn.begin_nested()
        conn.execute(text("INSERT INTO t VALUES (1)"))
        nested.rollback()  # ROLLBACK TO SAVEPOINT: the transaction is still open

        assert lock.held
    assert not lock.held


def test_given_raw_connection_transaction_when_committed_then_queued_like_the_others(
    store: Engine,
) -> None:
    # The inbox writer's path: BEGIN IMMEDIATE and commit() on a DBAPI connection.
    lock = _lock_of(store)
    raw = store.raw_connection()
    cursor = raw.cursor()
    cursor.execute("BEGIN IMMEDIATE")
    cursor.execute("INSERT INTO t VALUES (2)")
    assert lock.held
    got_in = threading.Event()

    def other_writer() -> None:
        with store.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (3)"))
        got_in.set()

    thread = threading.Thread(target=other_writer)
    thread.start()
    assert not got_in.wait(0.1)  # queued behind the raw transaction, not spinning in SQLite

    raw.commit()
    cursor.close()
    raw.close()

    assert got_in.wait(2)  # woken by the commit
    thread.join(2)
    with store.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 2
    assert not lock.held
