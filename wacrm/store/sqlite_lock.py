"""One SQLite transaction at a time per engine, handed over in arrival order.

Every transaction on SQLite starts with ``BEGIN IMMEDIATE`` (see :mod:`wacrm.store.engine`),
so all of them, reads included, queue for the database's single write lock. SQLite's own
queue is its busy handler, which *sleeps* between tries: 1, 2, 5, 10, 15, 20, 25, 25, 25, 50,
50 and then 100 ms. With the threads of one server taking turns (inbox writer, inbox
processor, WhatsApp and CRM outboxes, timer), a waiter regularly slept through several
commits of the others: measured, that put 0.2-1 s on the p99 of an auto-reply at 30
messages/s while the disk's commit took 0.3 ms.

So each engine's connections queue their transactions themselves, before ``BEGIN``: a waiter
is woken the moment the transaction ahead of it ends (commit, rollback, or its connection
closing), in FIFO order, so a thread that commits in a loop (the inbox writer) cannot starve
the others. It is done in the DBAPI connection (``sqlite3.connect(factory=...)``) so that it
covers every path to the file, SQLAlchemy's and the inbox writer's raw connection alike.
SQLite's busy handler still guards against other processes (a second server, ``wacrm``
commands). A waiter gives up waiting after ``timeout`` and falls back on SQLite's own
handling (which then says "database is locked" if the holder really is stuck), as before
this queue existed.
"""

from __future__ import annotations

import collections
import sqlite3
import threading
from typing import Any, Self


class FairLock:
    """A lock passed to its waiters in the order they came (a ticket queue)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: collections.deque[threading.Lock] = collections.deque()
        self._held = False

    def acquire(self, timeout: float) -> bool:
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        if turn.acquire(timeout=timeout):
            return True  # handed over by release(): we hold it now
        with self._mutex:
            if turn in self._waiters:
                self._waiters.remove(turn)
                return False
        return True  # handed over between the timeout and the mutex: we hold it after all

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()  # stays held, by the next in line
            else:
                self._held = False

    @property
    def held(self) -> bool:
        return self._held


def _opens(sql: str) -> bool:
    return sql.lstrip()[:5].upper() == "BEGIN"


def _ends(sql: str) -> bool:
    words = sql.lstrip()[:20].upper().split()
    if not words:
        return False
    # "ROLLBACK TO [SAVEPOINT] x" ends a savepoint, not the transaction.
    return words[0] in ("COMMIT", "END") or (
        words[0] == "ROLLBACK" and (len(words) == 1 or words[1] != "TO")
    )


class _QueuedCursor(sqlite3.Cursor):
    def execute(self, sql: str, parameters: Any = (), /) -> Self:
        conn = self.connection
        assert isinstance(conn, QueuedConnection)
        opening = _opens(sql) and not conn.queued
        if opening:
            conn.queue_up()
        try:
            return super().execute(sql, parameters)
        except BaseException:
            if opening and not conn._open():
                conn.leave()  # BEGIN itself failed: no transaction holds the turn
            raise
        finally:
            if not opening and _ends(sql) and not conn._open():
                conn.leave()


class QueuedConnection(sqlite3.Connection):
    """A ``sqlite3`` connection that takes its engine's :class:`FairLock` at ``BEGIN`` and
    gives it back when the transaction ends. Subclassed per engine (:func:`factory`)."""

    lock: FairLock
    timeout: float
    queued = False  # this connection's transaction holds the lock

    def queue_up(self) -> None:
        self.queued = self.lock.acquire(self.timeout)

    def leave(self) -> None:
        if self.queued:
            self.queued = False
            self.lock.release()

    def cursor(self, factory: Any = _QueuedCursor) -> Any:
        return super().cursor(factory)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            if not self._open():
                self.leave()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            if not self._open():
                self.leave()

    def _open(self) -> bool:
        try:
            return self.in_transaction
        except sqlite3.ProgrammingError:  # closed
            return False

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.leave()


def factory(timeout: float) -> type[QueuedConnection]:
    """A connection class for one engine: its connections share one queue."""
    return type("QueuedConnection", (QueuedConnection,), {"lock": FairLock(), "timeout": timeout})
