"""Send pacing for one business number: throughput (mps) and the per-recipient pair rate.

Both limits are Meta's (facts/whatsapp.md §2): 80 messages/s per number by default, counting
inbound and outbound, and about one message per 6 s to the same user, with bursts of up to
45 in 6 s that *borrow* future quota. Keeping under them locally is cheaper than provoking
130429 / 131056 and backing off. Time is plain seconds from the caller's clock, so tests
drive it; nothing here sleeps.

The state is in memory, per process: with several sender processes each keeps its own
budget, and Meta's error codes (handled by the outbox worker) remain the backstop.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MPS = 80.0
PAIR_INTERVAL = 6.0
PAIR_BURST = 45


class TokenBucket:
    """At most ``rate`` per second on average, bursts up to ``capacity``."""

    def __init__(self, rate: float, capacity: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = capacity if capacity is not None else rate
        self._tokens = self.capacity
        self._at: float | None = None

    def reserve(self, now: float) -> float:
        """Take one token; return how many seconds to wait before using it (0: now)."""
        if self._at is not None:
            elapsed = max(0.0, now - self._at)
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._at = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


@dataclass(slots=True)
class _Pair:
    tat: float  # when this user's quota is "caught up" (theoretical arrival time)
    burst_start: float
    burst_count: int


class PairLimiter:
    """≈1 message per ``interval`` per recipient; a burst of ``burst`` within one interval is
    allowed when the quota is caught up, after which the recipient is paced as if every
    message of the burst had been sent one ``interval`` apart (that is the borrowing)."""

    def __init__(self, interval: float = PAIR_INTERVAL, burst: int = PAIR_BURST) -> None:
        self.interval = interval
        self.burst = burst
        self._pairs: dict[str, _Pair] = {}

    def _current(self, recipient: str, now: float) -> _Pair:
        pair = self._pairs.get(recipient)
        if pair is None or now >= pair.tat:
            return _Pair(now, now, 0)
        return pair

    def wait(self, recipient: str, now: float) -> float:
        """Seconds until a message to ``recipient`` is allowed (0: now); changes nothing."""
        pair = self._current(recipient, now)
        if now - pair.burst_start < self.interval and pair.burst_count < self.burst:
            return 0.0
        return max(0.0, pair.tat - self.interval - now)

    def record(self, recipient: str, now: float) -> None:
        """A message to ``recipient`` was sent at ``now``."""
        pair = self._current(recipient, now)
        self._pairs[recipient] = _Pair(
            max(pair.tat, now) + self.interval, pair.burst_start, pair.burst_count + 1
        )

    def hold(self, recipient: str, until: float) -> None:
        """Meta said 131056: send nothing more to ``recipient`` before ``until``."""
        pair = self._pairs.get(recipient)
        tat = until + self.interval
        if pair is None or pair.tat < tat:
            # burst_count at the limit: no burst until the quota has caught up again.
            self._pairs[recipient] = _Pair(tat, until, self.burst)

    def forget_idle(self, now: float) -> None:
        """Drop recipients whose quota has caught up (bounds memory on long runs)."""
        for key in [k for k, p in self._pairs.items() if p.tat <= now]:
            del self._pairs[key]
