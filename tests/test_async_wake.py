"""The coroutine worker loop (``WakeLoop``): wakes from any thread end its wait at once, a wake
during a pass causes exactly one more pass, a wake before the loop waits is not lost, and stop
and the timeout end the wait. The loop's own wait is a fake sleep that never ends unless a
test says so, so only the event under test can end it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from wacrm.workers.async_wake import WakeLoop

LONG = 30.0  # a wait no test lives to see end


class Passes:
    """A ``step`` that counts its passes and signals each; ``during`` runs inside pass n."""

    def __init__(self, wait: float = LONG) -> None:
        self.count = 0
        self.wait = wait
        self.during: dict[int, list[Callable[[], None]]] = {}
        self._reached: dict[int, asyncio.Event] = {}

    def reached(self, n: int) -> asyncio.Event:
        return self._reached.setdefault(n, asyncio.Event())

    async def __call__(self) -> float:
        self.count += 1
        for action in self.during.get(self.count, []):
            action()
        self.reached(self.count).set()
        await asyncio.sleep(0)  # a pass yields to the loop, as a real one does
        return self.wait


class Forever:
    """A fake sleep that records how long it was asked for and ends only when cancelled."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.entered = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        self.entered.set()
        await asyncio.Event().wait()


def from_another_thread(wakes: WakeLoop) -> None:
    thread = threading.Thread(target=wakes.wake)
    thread.start()
    thread.join()


async def test_given_a_waiting_loop_when_woken_from_another_thread_then_it_passes_at_once() -> None:
    sleep, passes, stop = Forever(), Passes(), asyncio.Event()
    wakes = WakeLoop(sleep)
    task = asyncio.create_task(wakes.run(stop, passes))
    await asyncio.wait_for(sleep.entered.wait(), 5)

    await asyncio.to_thread(wakes.wake)

    await asyncio.wait_for(passes.reached(2).wait(), 5)  # the sleep alone would never end
    assert sleep.asked[0] == LONG
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_given_wakes_during_a_pass_when_it_ends_then_exactly_one_more_pass() -> None:
    sleep, passes, stop = Forever(), Passes(), asyncio.Event()
    wakes = WakeLoop(sleep)
    passes.during[1] = [lambda: from_another_thread(wakes)] * 3

    task = asyncio.create_task(wakes.run(stop, passes))
    await asyncio.wait_for(passes.reached(2).wait(), 5)
    with pytest.raises(TimeoutError):  # the three wakes were all served by pass 2
        await asyncio.wait_for(passes.reached(3).wait(), 0.2)

    assert passes.count == 2
    assert sleep.asked == [LONG]  # no wait between passes 1 and 2; pass 2 waits
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_given_a_wake_before_the_loop_waits_then_the_wait_returns_at_once() -> None:
    sleep, stop = Forever(), asyncio.Event()
    wakes = WakeLoop(sleep)

    from_another_thread(wakes)  # no loop bound yet: only the flag can remember it

    await asyncio.wait_for(wakes.wait(stop, LONG), 5)
    assert wakes.woken()
    assert sleep.asked == []


async def test_given_a_wake_before_run_then_the_first_pass_serves_it_once() -> None:
    sleep, passes, stop = Forever(), Passes(), asyncio.Event()
    wakes = WakeLoop(sleep)
    wakes.wake()  # work committed before the worker started: its first pass sees it

    task = asyncio.create_task(wakes.run(stop, passes))
    await asyncio.wait_for(sleep.entered.wait(), 5)

    assert passes.count == 1
    assert not wakes.woken()
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_given_a_cleared_wake_when_waiting_then_only_later_wakes_end_the_wait() -> None:
    sleep, stop = Forever(), asyncio.Event()
    wakes = WakeLoop(sleep)
    wakes.wake()
    wakes.clear()  # e.g. a flush that is about to read what is due

    waiting = asyncio.create_task(wakes.wait(stop, LONG))
    await asyncio.wait_for(sleep.entered.wait(), 5)
    assert not waiting.done()

    from_another_thread(wakes)
    await asyncio.wait_for(waiting, 5)


async def test_given_a_waiting_loop_when_stopped_then_run_returns_without_another_pass() -> None:
    sleep, passes, stop = Forever(), Passes(), asyncio.Event()
    wakes = WakeLoop(sleep)
    task = asyncio.create_task(wakes.run(stop, passes))
    await asyncio.wait_for(sleep.entered.wait(), 5)

    stop.set()

    await asyncio.wait_for(task, 5)
    assert passes.count == 1


async def test_given_a_stop_during_a_pass_then_the_pass_finishes_and_no_wait_follows() -> None:
    sleep, passes, stop = Forever(), Passes(), asyncio.Event()
    passes.during[1] = [stop.set]
    wakes = WakeLoop(sleep)

    await asyncio.wait_for(wakes.run(stop, passes), 5)

    assert passes.count == 1
    assert sleep.asked == []


async def test_given_no_wake_when_the_wait_times_out_then_the_next_pass_comes() -> None:
    passes, stop = Passes(wait=0.01), asyncio.Event()
    wakes = WakeLoop()  # the real asyncio.sleep
    task = asyncio.create_task(wakes.run(stop, passes))

    await asyncio.wait_for(passes.reached(3).wait(), 5)

    stop.set()
    await asyncio.wait_for(task, 5)
    assert not wakes.woken()


async def test_given_a_step_asking_no_wait_then_the_next_pass_starts_without_sleeping() -> None:
    sleep, passes, stop = Forever(), Passes(wait=0), asyncio.Event()
    passes.during[3] = [stop.set]
    wakes = WakeLoop(sleep)

    await asyncio.wait_for(wakes.run(stop, passes), 5)

    assert passes.count == 3
    assert sleep.asked == []


def test_given_a_closed_loop_when_woken_then_nothing_raises_and_the_flag_is_set() -> None:
    wakes = WakeLoop()
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    try:
        stop.set()
        loop.run_until_complete(wakes.wait(stop, LONG))  # binds the loop's bell, returns
    finally:
        loop.close()

    wakes.wake()

    assert wakes.woken()
