"""How fast webhooks are being stored right now, per store: the ingest side's load, as the
inbox writer reports its commits, for the background work that shares the process with it.

Under a burst, ingest must win: a webhook not answered in time is retried by Meta (and
after enough failures the subscription is disabled), while processing can wait, since every
row is durable in the inbox. The inbox processor needs several milliseconds of CPU per
message against ingest's ~0.1 ms, so while webhooks arrive faster than it could ever
process them it yields (see :class:`wacrm.workers.inbox.InboxProcessor`) and drains the
backlog once the burst is over.

The gauge is looked up by engine, so the writer and the processor of one process find the
same one without being wired to each other.
"""

from __future__ import annotations

import collections
import threading
import time
import weakref
from collections.abc import Callable

from sqlalchemy import Engine


class IngestGauge:
    """Rows committed per second over the last ``window`` seconds. Thread-safe: the writer
    records from its thread, the processor reads from its own."""

    def __init__(self, window: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._commits: collections.deque[tuple[float, int]] = collections.deque()
        self._rows = 0  # the sum of the counts in _commits

    def record(self, rows: int) -> None:
        """``rows`` were just committed (one group)."""
        now = self._clock()
        with self._lock:
            self._commits.append((now, rows))
            self._rows += rows
            self._trim(now)

    def rate(self) -> float:
        """Rows per second over the window ending now."""
        now = self._clock()
        with self._lock:
            self._trim(now)
            return self._rows / self._window

    def _trim(self, now: float) -> None:
        horizon = now - self._window
        while self._commits and self._commits[0][0] < horizon:
            self._rows -= self._commits.popleft()[1]


_GAUGES: weakref.WeakKeyDictionary[Engine, IngestGauge] = weakref.WeakKeyDictionary()
_GAUGES_LOCK = threading.Lock()


def ingest_gauge(engine: Engine) -> IngestGauge:
    """The gauge of ``engine``'s store in this process (created on first use)."""
    with _GAUGES_LOCK:
        gauge = _GAUGES.get(engine)
        if gauge is None:
            gauge = _GAUGES[engine] = IngestGauge()
        return gauge
