"""The one protocol every CRM connector implements, and the records that cross it.

A connector declares its limits as class attributes (batch maximum, request budget) so the
sync engine can size batches and rate budgets without knowing which CRM it talks to. Records
carry *standard* field names on our side; the connector maps them through its mapping file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

from wacrm.model import WriteResult

OBJECTS = ("contacts", "tickets", "tasks")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``requests`` calls per ``per_seconds`` for one CRM account."""

    requests: int
    per_seconds: float


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """One record to write. ``key`` is the idempotency key (external id / upsert key)."""

    key: str
    properties: dict[str, Any]
    # For tickets and tasks: the key of the contact they belong to.
    contact_key: str | None = None


@dataclass(frozen=True, slots=True)
class IncomingRecord:
    """One record read from the CRM, with standard field names."""

    key: str
    crm_id: str
    properties: dict[str, Any]
    modified_at: datetime


@dataclass(frozen=True, slots=True)
class ChangePage:
    records: list[IncomingRecord]
    next_cursor: str | None  # pass back to read the next page; None when caught up
    more: bool = False


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)


class ConnectorError(RuntimeError):
    """A CRM call failed as a whole (auth, config, outage); ``retryable`` says what to do."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after


@runtime_checkable
class CrmConnector(Protocol):
    name: ClassVar[str]
    max_batch: ClassVar[int]
    rate_limit: ClassVar[RateLimit]

    def check(self) -> CheckResult:
        """Prove the credentials and API are usable."""
        ...

    def write_batch(self, object: str, records: Sequence[OutgoingRecord]) -> list[WriteResult]:
        """Upsert up to ``max_batch`` records; one result per record, in order, by key."""
        ...

    def read_changes(
        self, object: str, cursor: str | None, signpost: datetime | None, limit: int
    ) -> ChangePage:
        """Records modified at or after ``cursor`` (inclusive) and not after ``signpost``."""
        ...
