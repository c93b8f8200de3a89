"""Test doubles shared by the sync tests (no tests here): a fake clock, a scripted connector."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from wacrm.connectors.base import (
    ChangePage,
    CheckResult,
    ConnectorError,
    IncomingRecord,
    OutgoingRecord,
    RateLimit,
)
from wacrm.model import WriteResult

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


class FakeClock:
    """A clock that only moves when told to; ``sleep`` advances it instead of waiting."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)

    def monotonic(self) -> float:
        return (self.now - T0).total_seconds()

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


@dataclass
class Call:
    object: str
    records: list[OutgoingRecord]


@dataclass
class FakeConnector:
    """Upserts into a dict by key; per-key failures and whole-call errors are scripted."""

    name: ClassVar[str] = "fake"
    max_batch: ClassVar[int] = 100
    rate_limit: ClassVar[RateLimit] = RateLimit(110, 10.0)

    store: dict[tuple[str, str], dict[str, object]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    # key → (error_code, retryable); consumed per call when ``fail_once`` is set
    failures: dict[str, tuple[str, bool]] = field(default_factory=dict)
    fail_once: bool = False
    raise_next: list[ConnectorError] = field(default_factory=list)
    during_call: Callable[[], None] | None = None
    changes: list[IncomingRecord] = field(default_factory=list)
    reads: list[tuple[str, str | None, datetime | None]] = field(default_factory=list)

    def check(self) -> CheckResult:
        return CheckResult(ok=True, detail="fake")

    def write_batch(self, object: str, records: Sequence[OutgoingRecord]) -> list[WriteResult]:
        assert len(records) <= self.max_batch, "batch over the connector's maximum"
        self.calls.append(Call(object, list(records)))
        if self.during_call is not None:
            hook, self.during_call = self.during_call, None
            hook()
        if self.raise_next:
            raise self.raise_next.pop(0)
        results = []
        for rec in records:
            failure = self.failures.get(rec.key)
            if failure is not None:
                if self.fail_once:
                    del self.failures[rec.key]
                code, retryable = failure
                results.append(
                    WriteResult(
                        key=rec.key,
                        ok=False,
                        error_code=code,
                        error_message=f"{code} for {rec.key}",
                        retryable=retryable,
                    )
                )
                continue
            current = self.store.setdefault((object, rec.key), {})
            current.update(rec.properties)
            results.append(WriteResult(key=rec.key, ok=True, crm_id=f"crm-{rec.key}"))
        return results

    def read_changes(
        self, object: str, cursor: str | None, signpost: datetime | None, limit: int
    ) -> ChangePage:
        self.reads.append((object, cursor, signpost))
        # Cursor: an ISO time (inclusive), or "<ISO>|<offset>" while paging one query.
        start, _, offset = (cursor or "").partition("|")
        since = datetime.fromisoformat(start) if start else None
        skip = int(offset or 0)
        found = sorted(
            (
                r
                for r in self.changes
                if (since is None or r.modified_at >= since)
                and (signpost is None or r.modified_at <= signpost)
            ),
            key=lambda r: (r.modified_at, r.key),
        )
        page = found[skip : skip + limit]
        more = len(found) > skip + limit
        if not page:
            return ChangePage(records=[], next_cursor=None, more=False)
        if more:
            return ChangePage(page, f"{start}|{skip + len(page)}", more=True)
        return ChangePage(page, page[-1].modified_at.isoformat(), more=False)

    def keys_written(self, object: str) -> list[str]:
        return [r.key for c in self.calls if c.object == object for r in c.records]
