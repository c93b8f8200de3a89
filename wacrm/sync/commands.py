"""What the ``wacrm sync`` commands and ``wacrm serve`` call: connectors per account, one sync
run with a progress bar, the sync loop, and the status tables."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import Engine, func, select

from wacrm.connectors.base import CrmConnector, RateLimit
from wacrm.store.schema import accounts, crm_outbox
from wacrm.sync.engine import SyncEngine, SyncReport
from wacrm.sync.status import FailedRecord, SyncStatus
from wacrm.sync.worker import SyncWorker
from wacrm.workers.crm_outbox import CrmOutboxWorker

HUBSPOT_LIKE = RateLimit(110, 10.0)


@dataclass(frozen=True, slots=True)
class SimulatorTarget:
    """Sync every account against the CRM simulator at ``url`` (demos, benchmarks, tests)."""

    url: str
    max_batch: int = 100
    rate_limit: RateLimit = HUBSPOT_LIKE
    timeout: float = 30.0


def parse_rate(text: str) -> RateLimit:
    """``"110/10"`` → 110 requests per 10 s."""
    try:
        requests, seconds = text.split("/", 1)
        limit = RateLimit(int(requests), float(seconds))
    except ValueError:
        raise ValueError(
            f"rate limit must look like 110/10 (requests/seconds), got {text!r}"
        ) from None
    if limit.requests < 1 or limit.per_seconds <= 0:
        raise ValueError(f"rate limit must be positive, got {text!r}")
    return limit


class ConnectorRegistry:
    """One connector per account, made on first use and kept (its rate budget lives in it)."""

    def __init__(self, engine: Engine, simulator: SimulatorTarget | None = None) -> None:
        self._engine = engine
        self._simulator = simulator
        self._lock = threading.Lock()
        self._made: dict[int, CrmConnector] = {}

    def __call__(self, account_id: int) -> CrmConnector:
        with self._lock:
            found = self._made.get(account_id)
            if found is None:
                found = self._made[account_id] = self._make(account_id)
            return found

    def _make(self, account_id: int) -> CrmConnector:
        if self._simulator is not None:
            from wacrm.sync.sim_connector import SimulatorConnector

            sim = self._simulator
            return SimulatorConnector.connect(
                sim.url, max_batch=sim.max_batch, rate_limit=sim.rate_limit, timeout=sim.timeout
            )
        with self._engine.connect() as conn:
            crm = conn.execute(select(accounts.c.crm).where(accounts.c.id == account_id)).scalar()
        if crm == "local":
            from wacrm.connectors.local import LocalConnector

            return LocalConnector(self._engine, account_id)
        raise ValueError(f"account {account_id}: no sync support for CRM {crm!r} yet")


def build_sync(
    engine: Engine,
    simulator: SimulatorTarget | None = None,
    progress: Callable[[int], None] | None = None,
) -> SyncEngine:
    registry = ConnectorRegistry(engine, simulator)
    outbox = CrmOutboxWorker(engine, registry, progress=progress)
    return SyncEngine(engine, registry, outbox)


def build_sync_worker(engine: Engine, simulator: SimulatorTarget | None = None) -> SyncWorker:
    """The worker ``wacrm serve`` runs; CRM change webhooks call its ``notify_crm_change``."""
    return SyncWorker(build_sync(engine, simulator))


def pending_count(engine: Engine) -> int:
    with engine.connect() as conn:
        count = conn.execute(
            select(func.count()).select_from(crm_outbox).where(crm_outbox.c.state == "pending")
        ).scalar()
    return int(count or 0)


def run_once(
    engine: Engine, simulator: SimulatorTarget | None, console: Console | None
) -> SyncReport:
    """One full run, both directions; a progress bar when there is a console to draw on."""
    if console is None:
        return build_sync(engine, simulator).run_once(force=True)
    total = pending_count(engine)
    columns = (TextColumn("CRM outbox"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("sync", total=total or None)
        sync = build_sync(engine, simulator, progress=lambda n: bar.advance(task, n))
        return sync.run_once(force=True)


def report_lines(report: SyncReport) -> list[str]:
    out = report.outbound
    lines = [
        f"outbound: {out.confirmed} confirmed in {out.calls} calls, {out.retried} to retry, "
        f"{out.dead} dead-lettered, {out.deferred} waiting for their contact"
    ]
    for account_id, pulled in sorted(report.inbound.items()):
        m = pulled.mirror
        lines.append(
            f"inbound (account {account_id}): {pulled.records} read, {m.applied} applied, "
            f"{m.unchanged} unchanged, {m.created} new contacts, {pulled.duplicates} duplicates"
        )
    lines.extend(f"error: {e}" for e in report.errors)
    return lines


def status_tables(status: SyncStatus) -> list[Any]:
    queues = Table(
        "account", "object", "pending", "due", "retrying", "dead", "oldest", title="CRM outbox"
    )
    for q in status.queues:
        queues.add_row(
            q.account,
            q.object,
            str(q.pending),
            str(q.due),
            str(q.retrying),
            str(q.dead),
            _when(q.oldest),
        )
    marks = Table(
        "account", "connector", "object", "direction", "read up to", "updated", title="Cursors"
    )
    for c in status.cursors:
        marks.add_row(
            c.account, c.connector, c.object, c.direction, c.at or "-", _when(c.updated_at)
        )
    return [
        queues,
        marks,
        _failures(status.last_errors, "Last errors (retrying)", "next try"),
        _failures(status.dead_letters, f"Dead letters ({status.dead_total})", "since"),
    ]


def _failures(rows: list[FailedRecord], title: str, when: str) -> Table:
    table = Table("account", "object", "key", "code", "message", "attempts", when, title=title)
    for r in rows:
        table.add_row(
            r.account,
            r.object,
            r.key,
            r.error_code or "-",
            (r.error or "")[:120],
            str(r.attempts),
            _when(r.when),
        )
    return table


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
