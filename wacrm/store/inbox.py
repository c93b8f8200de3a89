"""The durable inbox: one row per provider event, written with group commit.

A webhook is answered only after its rows are committed (fsync'd). Committing each request on
its own would cap ingest at the disk's fsync rate, so a single writer thread gathers every row
that arrived while the previous commit was in flight and commits them together.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite

from wacrm.store.schema import inbox, quarantine


@dataclass(frozen=True, slots=True)
class InboxRow:
    account_id: int
    provider: str
    kind: str
    event_id: str
    payload: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    account_id: int | None
    source: str
    reason: str
    payload: str
    created_at: datetime


def insert_inbox_rows(conn: Connection, rows: Sequence[InboxRow]) -> None:
    """Insert rows, ignoring those whose event is already in the inbox (a redelivery)."""
    if not rows:
        return
    values = [
        {
            "account_id": r.account_id,
            "provider": r.provider,
            "kind": r.kind,
            "event_id": r.event_id,
            "payload": r.payload,
            "received_at": r.received_at,
            "state": "pending",
            "attempts": 0,
        }
        for r in rows
    ]
    if conn.dialect.name == "postgresql":
        conn.execute(postgresql.insert(inbox).on_conflict_do_nothing(), values)
    else:
        conn.execute(sqlite.insert(inbox).on_conflict_do_nothing(), values)


def insert_quarantine_rows(conn: Connection, rows: Sequence[QuarantineRow]) -> None:
    if rows:
        conn.execute(
            quarantine.insert(),
            [
                {
                    "account_id": r.account_id,
                    "source": r.source,
                    "reason": r.reason,
                    "payload": r.payload,
                    "created_at": r.created_at,
                }
                for r in rows
            ],
        )


@dataclass(slots=True)
class _Job:
    rows: Sequence[InboxRow]
    quarantined: Sequence[QuarantineRow]
    done: Future[None]


class GroupCommitWriter:
    """One writer thread; ``submit`` returns a future resolved once the rows are committed.

    If a group's commit fails, every future in it fails, so every waiting webhook is answered
    5xx and the provider retries; nothing is acknowledged that is not on disk.
    """

    def __init__(self, engine: Engine, max_group: int = 2000) -> None:
        self._engine = engine
        self._max_group = max_group
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.commits = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="inbox-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def submit(
        self, rows: Sequence[InboxRow], quarantined: Sequence[QuarantineRow] = ()
    ) -> Future[None]:
        if self._thread is None:
            raise RuntimeError("GroupCommitWriter.start() was not called")
        job = _Job(rows, quarantined, Future())
        self._queue.put(job)
        return job.done

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stop = False
            size = len(first.rows)
            while size < self._max_group:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
                size += len(nxt.rows)
            self._commit(group)
            if stop:
                return

    def _commit(self, group: Iterable[_Job]) -> None:
        # A waiter that gave up (cancelled) must not kill this thread when its result is set;
        # its rows are still written: the provider's retry is then a harmless duplicate.
        jobs = list(group)
        waiting = [j for j in jobs if j.done.set_running_or_notify_cancel()]
        try:
            with self._engine.begin() as conn:
                insert_inbox_rows(conn, [r for j in jobs for r in j.rows])
                insert_quarantine_rows(conn, [q for j in jobs for q in j.quarantined])
        except Exception as exc:  # every waiter learns the group failed
            for job in waiting:
                job.done.set_exception(exc)
            return
        self.commits += 1
        for job in waiting:
            job.done.set_result(None)
