"""When to sync: the change-threshold trigger.

A sync runs at once when the share of changed records reaches the threshold (default 5 %), a
batch is full, something urgent waits (a ticket for an inbound request) or the CRM told us by
webhook; otherwise it waits for the baseline interval (default 30 min). Small trickles of
changes thus cost one well-filled call per interval instead of one call per change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta


class Reason(enum.StrEnum):
    FORCED = "forced"
    URGENT = "urgent"
    WEBHOOK = "webhook"
    THRESHOLD = "threshold"
    FULL_BATCH = "full_batch"
    BASELINE = "baseline"


@dataclass(frozen=True, slots=True)
class TriggerPolicy:
    threshold: float = 0.05
    baseline: timedelta = timedelta(minutes=30)
    # Oldest pending change older than this is flushed; defaults to the baseline interval.
    max_age: timedelta | None = None

    @property
    def age_limit(self) -> timedelta:
        return self.max_age if self.max_age is not None else self.baseline


@dataclass(frozen=True, slots=True)
class QueueState:
    """What is waiting for one (account, object) right now."""

    pending: int  # due pending records
    oldest: datetime | None  # created_at of the oldest due pending record
    urgent: bool
    max_batch: int
    # Records in the mirror, for the changed share; None where no mirror applies (tickets).
    mirrored: int | None = None


def outbound_reason(
    policy: TriggerPolicy, state: QueueState, now: datetime, *, force: bool = False
) -> Reason | None:
    """Why this queue should be flushed now, or ``None`` to keep waiting.

    ``FULL_BATCH`` alone means: send only full batches and let the remainder wait, which keeps
    calls close to ⌈N/batch⌉ while changes keep arriving.
    """
    if state.pending <= 0:
        return None
    if force:
        return Reason.FORCED
    if state.urgent:
        return Reason.URGENT
    if state.mirrored is not None and (
        # An empty mirror makes any change "all of it".
        state.mirrored == 0 or state.pending / state.mirrored >= policy.threshold
    ):
        return Reason.THRESHOLD
    if state.oldest is not None and now - state.oldest >= policy.age_limit:
        return Reason.BASELINE
    if state.pending >= state.max_batch:
        return Reason.FULL_BATCH
    return None


def inbound_due(
    policy: TriggerPolicy, last_run: datetime | None, now: datetime, *, webhook: bool = False
) -> Reason | None:
    """Whether to read CRM changes now: at once on a change webhook, else on the baseline."""
    if webhook:
        return Reason.WEBHOOK
    if last_run is None or now - last_run >= policy.baseline:
        return Reason.BASELINE
    return None
