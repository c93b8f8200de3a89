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

# ``messages``: one activity per WhatsApp message, in and out (HubSpot: a Communication).
OBJECTS = ("contacts", "tickets", "tasks", "messages")
# Objects that belong to a contact: each record carries its contact's key.
CHILD_OBJECTS = frozenset({"tickets", "tasks", "messages"})
# Appended to a text cut to fit a CRM property's limit: the record is written, never refused.
TRUNCATION_MARKER = " …[truncated]"


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


def fit_text(value: str, limit: int | None) -> str:
    """``value`` cut to at most ``limit`` characters, ending with :data:`TRUNCATION_MARKER`
    when something was cut; unchanged when it fits or there is no limit."""
    if limit is None or len(value) <= limit:
        return value
    if limit <= len(TRUNCATION_MARKER):
        return value[:limit]
    return value[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


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
