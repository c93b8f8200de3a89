"""One retry policy for every CRM call: Retry-After first, else exponential backoff with full
jitter, bounded by attempts *and* elapsed time (Airbyte, dlt).

The same policy drives two loops: the HTTP choke point retrying one call within seconds, and
the CRM outbox rescheduling a failed record across flushes (``next_attempt_at``). Nothing here
sleeps or reads a clock by itself; callers pass ``now``/``elapsed`` and do the waiting.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_attempts`` counts every try, the first included; ``max_elapsed`` in seconds."""

    max_attempts: int = 6
    max_elapsed: float = 120.0
    base: float = 0.5
    cap: float = 30.0
    # A Retry-After longer than this is not waited for inside one call: the caller gives up
    # and reschedules, so one throttled account cannot hold a worker for minutes.
    max_retry_after: float = 60.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base·2^(attempt-1))].

        Full jitter rather than equal jitter because many records failing together (one 503
        for a whole batch) must not come back together.
        """
        ceiling = min(self.cap, self.base * (2 ** max(0, attempt - 1)))
        return rng.uniform(0.0, ceiling)

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before try number ``attempt + 1``."""
        if retry_after is not None and retry_after >= 0:
            return retry_after
        return self.backoff(attempt, rng)

    def should_retry(self, attempt: int, elapsed: float, next_delay: float) -> bool:
        """Whether try ``attempt + 1`` may happen after ``next_delay`` more seconds."""
        if attempt >= self.max_attempts:
            return False
        if next_delay > self.max_retry_after:
            return False
        return elapsed + next_delay <= self.max_elapsed


# Per-call retries inside the HTTP choke point: quick, a couple of minutes at most.
CALL_POLICY = RetryPolicy()
# Per-record retries in the CRM outbox, across flushes: hours, then a dead letter.
RECORD_POLICY = RetryPolicy(
    max_attempts=10, max_elapsed=24 * 3600.0, base=5.0, cap=3600.0, max_retry_after=24 * 3600.0
)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    Returns ``None`` for a missing or unreadable header, so the caller falls back to backoff.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())
