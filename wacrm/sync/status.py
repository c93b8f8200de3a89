"""What ``wacrm sync status`` shows: queue depth, cursors, last errors and dead letters."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Engine, case, func, select

from wacrm.store.schema import accounts, crm_outbox, cursors


@dataclass(frozen=True, slots=True)
class QueueDepth:
    account: str
    object: str
    pending: int
    due: int
    retrying: int  # pending rows that failed at least once
    dead: int
    oldest: datetime | None


@dataclass(frozen=True, slots=True)
class CursorState:
    account: str
    connector: str
    object: str
    direction: str
    at: str | None  # newest modification time stored
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class FailedRecord:
    account: str
    object: str
    key: str
    state: str
    error_code: str | None
    error: str | None
    attempts: int
    when: datetime  # dead: when it died; pending: when it is tried next


@dataclass(frozen=True, slots=True)
class SyncStatus:
    queues: list[QueueDepth]
    cursors: list[CursorState]
    last_errors: list[FailedRecord]
    dead_letters: list[FailedRecord]
    dead_total: int

    def to_json(self) -> str:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2).decode()


def sync_status(engine: Engine, now: datetime, *, limit: int = 20) -> SyncStatus:
    o = crm_outbox
    pending = o.c.state == "pending"
    name = accounts.c.name
    with engine.connect() as conn:
        queues = [
            QueueDepth(
                r.name, r.object, int(r.pending), int(r.due), int(r.retrying), int(r.dead), r.oldest
            )
            for r in conn.execute(
                select(
                    name,
                    o.c.object,
                    func.sum(case((pending, 1), else_=0)).label("pending"),
                    func.sum(case((pending & (o.c.next_attempt_at <= now), 1), else_=0)).label(
                        "due"
                    ),
                    func.sum(case((pending & (o.c.attempts > 0), 1), else_=0)).label("retrying"),
                    func.sum(case((o.c.state == "dead", 1), else_=0)).label("dead"),
                    func.min(case((pending, o.c.created_at), else_=None)).label("oldest"),
                )
                .join(accounts, accounts.c.id == o.c.account_id)
                .group_by(name, o.c.object)
                .order_by(name, o.c.object)
            )
        ]
        marks = [
            CursorState(
                r.name,
                r.connector,
                r.object,
                r.direction,
                orjson.loads(r.value).get("at"),
                r.updated_at,
            )
            for r in conn.execute(
                select(
                    name,
                    cursors.c.connector,
                    cursors.c.object,
                    cursors.c.direction,
                    cursors.c.value,
                    cursors.c.updated_at,
                )
                .join(accounts, accounts.c.id == cursors.c.account_id)
                .order_by(name, cursors.c.connector, cursors.c.object, cursors.c.direction)
            )
        ]
        failed = select(
            name,
            o.c.object,
            o.c.record_key,
            o.c.state,
            o.c.error_code,
            o.c.last_error,
            o.c.attempts,
            o.c.updated_at,
            o.c.next_attempt_at,
        ).join(accounts, accounts.c.id == o.c.account_id)
        errors = [
            _failed(r, r.next_attempt_at)
            for r in conn.execute(
                failed.where(pending, o.c.last_error.is_not(None))
                .order_by(o.c.updated_at.desc())
                .limit(limit)
            )
        ]
        dead = [
            _failed(r, r.updated_at)
            for r in conn.execute(
                failed.where(o.c.state == "dead").order_by(o.c.updated_at.desc()).limit(limit)
            )
        ]
        dead_total = conn.execute(
            select(func.count()).select_from(o).where(o.c.state == "dead")
        ).scalar()
    return SyncStatus(queues, marks, errors, dead, int(dead_total or 0))


def _failed(row: Any, when: datetime) -> FailedRecord:
    return FailedRecord(
        row.name,
        row.object,
        row.record_key,
        row.state,
        row.error_code,
        row.last_error,
        int(row.attempts),
        when,
    )
