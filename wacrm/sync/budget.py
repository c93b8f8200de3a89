"""The rate budget of one CRM account: a token bucket sized from the connector's declared limit
and corrected by what the CRM's response headers say.

CRMs count requests in a *rolling* window (HubSpot: 110 per 10 s). A bucket of capacity ``B``
refilled at ``r`` admits at most ``B + r·W`` calls in any window ``W``, so we size it to
``B + r·W = limit·safety``: a small burst and an even pace just under the limit. A full
bucket of ``limit`` tokens would send 2 × limit in the first window and collect 429s.

Headers correct the estimate as we go: ``Remaining`` lowers the tokens we think we have (another
process may share the app's quota), ``Max``/``Interval`` resize the bucket (an account on a
higher tier), and a 429 empties it. The clock and sleep are injected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from wacrm.connectors.base import RateLimit

_EPSILON = 1e-9
_MIN_SLEEP = 1e-4


class RateBudget:
    def __init__(
        self,
        requests: int,
        per_seconds: float,
        *,
        burst: int = 1,
        safety: float = 0.99,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if requests < 1 or per_seconds <= 0:
            raise ValueError(f"invalid rate limit: {requests} per {per_seconds} s")
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._burst = max(1, burst)
        self._safety = safety
        self._resize(requests, per_seconds)
        self._tokens = float(self.capacity)
        self._stamp = clock()
        self._hold_until = 0.0
        self.waited = 0.0  # total seconds spent waiting, for reports

    @classmethod
    def for_limit(
        cls,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        safety: float = 0.99,
    ) -> RateBudget:
        # A 1 % burst: Dataverse's 6,000 per 5 min may start with 60 at once, HubSpot with 1.
        burst = max(1, limit.requests // 100)
        return cls(
            limit.requests, limit.per_seconds, burst=burst, safety=safety, clock=clock, sleep=sleep
        )

    def _resize(self, requests: int, per_seconds: float) -> None:
        self.limit = requests
        self.window = per_seconds
        allowed = max(1.0, requests * self._safety)
        self.capacity = max(1, min(self._burst, int(allowed) - 1))
        self.rate = max(allowed - self.capacity, 0.5) / per_seconds

    def _refill(self, now: float) -> None:
        self._tokens = min(float(self.capacity), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def tokens(self) -> float:
        with self._lock:
            self._refill(self._clock())
            return self._tokens

    def acquire(self) -> float:
        """Take one token, sleeping until there is one; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._refill(now)
                # Tolerances: refilling in float arithmetic lands on 0.9999999999 tokens, and
                # a sleep of 1e-17 s no longer moves a clock that reads 1e6 s.
                if now >= self._hold_until - _EPSILON and self._tokens >= 1.0 - _EPSILON:
                    self._tokens = max(0.0, self._tokens - 1.0)
                    self.waited += waited
                    return waited
                need = max(self._hold_until - now, (1.0 - self._tokens) / self.rate, _MIN_SLEEP)
            self._sleep(need)
            waited += need

    def observe(
        self,
        *,
        remaining: int | None = None,
        limit: int | None = None,
        window: float | None = None,
    ) -> None:
        """Correct the bucket from a response's rate-limit headers."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            resized = limit is not None and window is not None and limit > 0 and window > 0
            if resized and (limit, window) != (self.limit, self.window):
                assert limit is not None and window is not None
                self._resize(limit, window)
                self._tokens = min(self._tokens, float(self.capacity))
            if remaining is not None and remaining >= 0:
                # The server knows about every caller sharing the quota; we only know about us.
                self._tokens = min(self._tokens, float(remaining))

    def throttled(self, retry_after: float | None = None) -> None:
        """A 429 arrived: spend nothing until ``retry_after`` (or one token's time) passes."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            self._tokens = 0.0
            pause = retry_after if retry_after is not None else 1.0 / self.rate
            self._hold_until = max(self._hold_until, now + pause)
