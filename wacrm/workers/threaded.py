"""A worker's loop on a thread of its own, woken directly by whoever has work for it.

The inbox processor and the WhatsApp outbox are the auto-reply's path: webhook stored →
processor → outbox → Cloud API. Run as coroutines that hand each pass to
``asyncio.to_thread``, every wake went through the event loop (which is busy parsing
webhooks) and then through the thread pool's queue: two hand-offs, each waiting its turn for
the GIL, per hop. Here ``wake`` sets a :class:`threading.Event` the worker's own thread
waits on, so the processor's thread wakes the outbox's thread directly. The store work was
blocking anyway and always ran off the event loop; nothing else changes.

Also here, how the processor feeds the workers behind it: :class:`Downstream` (wake one, at
most so often) and :class:`Handover` (a sender taking over rows the processor claimed for it
in its own transaction).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from sqlalchemy import Connection


class WorkerThread:
    """Calls ``step`` on a dedicated thread until stopped. ``step`` does one pass and returns
    how long to wait (seconds) for a :meth:`wake` before the next pass (0: go on at once);
    it must not raise."""

    def __init__(self, name: str, step: Callable[[], float]) -> None:
        self.name = name
        self._step = step
        self._woken = threading.Event()
        self._stopping = threading.Event()

    def wake(self) -> None:
        """Look now. Safe from any thread; a wake during a pass causes another pass."""
        self._woken.set()

    def rest(self, seconds: float) -> None:
        """Sleep on the worker's thread for ``seconds`` whatever wakes arrive (a stop ends
        it): for a worker giving its CPU to others, not waiting for work."""
        self._stopping.wait(seconds)

    def woken(self) -> bool:
        """A wake came since the current pass began (the pass may give way to it)."""
        return self._woken.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then let the current pass finish."""
        self._stopping.clear()
        thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        thread.start()
        try:
            await stop.wait()
        finally:
            self._stopping.set()
            self._woken.set()
            await asyncio.to_thread(thread.join)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._woken.clear()  # before the pass: a wake during it is not lost
            wait = self._step()
            if wait > 0 and not self._stopping.is_set():
                self._woken.wait(wait)


J = TypeVar("J")


class Handover(Protocol[J]):
    """A sender that takes over rows claimed in the processor's transaction."""

    def claim_in(self, conn: Connection, now: datetime) -> Sequence[J]: ...

    def hand_over(self, jobs: Sequence[J]) -> None: ...


@dataclass(slots=True)
class Downstream:
    """A worker the processor feeds: woken after a pass that may have queued work for it,
    at most once per ``every`` seconds (0: after every such pass). A wake held back by
    ``every`` is owed, and given as soon as it is allowed, even if nothing else arrives."""

    wake: Callable[[], None]
    every: float = 0.0
    owed: bool = False
    woken_at: float = float("-inf")  # time.monotonic() of the last wake

    def feed(self, fed: bool, now: float) -> float | None:
        """After a pass (``fed``: it may have queued work) at ``now``: wake if a wake is owed
        and allowed; the seconds until an owed wake is allowed, or None if none is owed."""
        self.owed |= fed
        if not self.owed:
            return None
        if now - self.woken_at >= self.every:
            self.owed, self.woken_at = False, now
            self.wake()
            return None
        return self.woken_at + self.every - now
