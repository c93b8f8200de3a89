"""The loop of a worker that runs as a coroutine and is woken from any thread.

The CRM outbox, the sync loop, the rule timer and the media worker each do a pass, then wait
for a wake, the stop event or their poll interval, whichever comes first. :class:`WakeLoop`
is that loop once: the coroutine twin of :class:`~wacrm.workers.threaded.WorkerThread`,
for workers whose passes are coroutines (or hand blocking work to ``asyncio.to_thread``).

A wake is a :class:`threading.Event` (the truth: "work came since the pass began") plus a ring
of an :class:`asyncio.Event` on the loop that waits, so the waiting coroutine ends at once.
No wake is lost: one before :meth:`WakeLoop.run` starts is served by the first pass, one
during a pass makes the wait after it return at once (however many came: one more pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any

AsyncSleep = Callable[[float], Awaitable[None]]


class WakeLoop:
    """Calls ``step`` until stopped. ``step`` does one pass and returns how long to wait
    (seconds) for a :meth:`wake` before the next pass (0: go on at once); it must not raise.
    ``sleep`` does the waiting for that long (a test injects a fake one)."""

    def __init__(self, sleep: AsyncSleep = asyncio.sleep) -> None:
        self._sleep = sleep
        self._woken = threading.Event()
        # The loop a coroutine waits on and its event, bound together so that a thread
        # reading them never sees one without the other; None while no loop waits.
        self._bell: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def wake(self) -> None:
        """Look now. Safe from any thread; a wake during a pass causes another pass."""
        self._woken.set()
        bell = self._bell
        if bell is not None:
            loop, rung = bell
            # is_closed() then call_soon_threadsafe() races a closing loop; either way a
            # closed loop has no one left to wake.
            with contextlib.suppress(RuntimeError):
                if not loop.is_closed():
                    loop.call_soon_threadsafe(rung.set)

    def woken(self) -> bool:
        """A wake came since the last :meth:`clear` (a pass may give way to it)."""
        return self._woken.is_set()

    def clear(self) -> None:
        """Forget the wakes so far, just before looking for work: the look sees what they
        announced, and a wake after it causes another pass. Safe from any thread."""
        self._woken.clear()

    async def wait(self, stop: asyncio.Event, seconds: float) -> None:
        """Until a wake since the last :meth:`clear`, ``stop``, or ``seconds`` have passed."""
        rung = self._bind()
        # Clear the bell before reading the flag: a wake after the read rings it afresh, and
        # a ring left from a wake the last pass already saw does not cause a pass for nothing.
        rung.clear()
        if stop.is_set() or self._woken.is_set():
            return
        await first_of(self._sleep(seconds), rung.wait(), stop.wait())

    async def run(self, stop: asyncio.Event, step: Callable[[], Awaitable[float]]) -> None:
        """Run passes until ``stop`` is set; the pass under way when it is set finishes."""
        self._bind()
        try:
            while not stop.is_set():
                self.clear()  # before the pass: a wake during it is not lost
                seconds = await step()
                if seconds > 0:
                    await self.wait(stop, seconds)
        finally:
            self._bell = None  # later wakes only set the flag: the next run's pass sees them

    def _bind(self) -> asyncio.Event:
        """The bell of the running loop, made on first use (a worker may run on a new loop)."""
        loop = asyncio.get_running_loop()
        bell = self._bell
        if bell is None or bell[0] is not loop:
            bell = self._bell = (loop, asyncio.Event())
        return bell[1]


async def first_of(*waits: Awaitable[Any]) -> None:
    """Wait until any of ``waits`` finishes, then cancel the rest."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
