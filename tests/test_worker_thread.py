"""A worker's own thread, woken directly; and how often the processor wakes what it feeds."""

from __future__ import annotations

import asyncio
import threading

import pytest

from wacrm.workers.threaded import Downstream, WorkerThread


async def test_given_worker_thread_when_woken_from_another_thread_then_it_passes_again() -> None:
    passes: list[str] = []
    second = threading.Event()

    def step() -> float:
        passes.append(threading.current_thread().name)
        if len(passes) >= 2:
            second.set()
        return 30.0  # only a wake can bring the next pass this soon

    worker = WorkerThread("test-worker", step)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(0.05)

    threading.Thread(target=worker.wake).start()
    woken = await asyncio.to_thread(second.wait, 5)

    assert woken
    assert passes[:2] == ["test-worker", "test-worker"]  # on its own thread, not the loop's
    stop.set()
    await asyncio.wait_for(task, timeout=5)


async def test_given_step_asks_for_no_wait_when_running_then_next_pass_at_once() -> None:
    calls = 0
    done = threading.Event()

    def step() -> float:
        nonlocal calls
        calls += 1
        if calls == 3:
            done.set()
        return 0.0 if calls < 3 else 30.0  # a full pass: more work is waiting

    worker = WorkerThread("test-worker", step)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    assert await asyncio.to_thread(done.wait, 5)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert calls == 3


def test_given_unthrottled_downstream_when_pass_fed_it_then_woken_each_time() -> None:
    wakes: list[float] = []
    target = Downstream(lambda: wakes.append(1.0))

    assert target.feed(True, 10.0) is None
    assert target.feed(True, 10.001) is None
    assert target.feed(False, 10.002) is None  # a pass that queued nothing wakes nothing

    assert len(wakes) == 2


def test_given_throttled_downstream_when_fed_often_then_woken_at_most_every_interval() -> None:
    wakes: list[str] = []
    target = Downstream(lambda: wakes.append("crm"), every=0.25)

    assert target.feed(True, 100.0) is None  # first: at once
    assert target.feed(True, 100.1) == pytest.approx(0.15)  # owed, allowed in 0.15 s
    assert target.feed(False, 100.2) is not None  # still owed, even with nothing new
    assert wakes == ["crm"]

    assert target.feed(False, 100.25) is None  # the owed wake, when allowed

    assert wakes == ["crm", "crm"]
    assert target.feed(False, 100.3) is None  # nothing owed any more
    assert wakes == ["crm", "crm"]
