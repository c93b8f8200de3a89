"""The worker process's plumbing: loopback wake datagrams reach the inbox processor only, and
the workers stop when asked."""

from __future__ import annotations

import asyncio

from wacrm.workers.process import run_workers
from wacrm.workers.wake import WakeSender, bind_wake_socket


class RecordingWorker:
    def __init__(self, name: str) -> None:
        self.name = name
        self.wakes = 0
        self.stopped = False

    def wake(self) -> None:
        self.wakes += 1

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.stopped = True


async def test_given_wake_datagrams_when_sent_then_only_inbox_processor_is_woken() -> None:
    inbox, outbox = RecordingWorker("inbox"), RecordingWorker("whatsapp-outbox")
    sock = bind_wake_socket()
    sender = WakeSender(sock.getsockname()[1])
    runner = asyncio.create_task(run_workers([inbox, outbox], sock))
    await asyncio.sleep(0.05)

    for _ in range(3):
        sender.wake()
    for _ in range(100):
        if inbox.wakes >= 3:
            break
        await asyncio.sleep(0.01)
    runner.cancel()

    assert inbox.wakes == 3
    assert outbox.wakes == 0


async def test_given_worker_crashes_when_running_then_others_are_stopped_too() -> None:
    class Crashing(RecordingWorker):
        async def run(self, stop: asyncio.Event) -> None:
            raise RuntimeError("boom")

    survivor = RecordingWorker("inbox")

    await asyncio.wait_for(run_workers([Crashing("media"), survivor], None), timeout=5)

    assert survivor.stopped


def test_given_no_listener_when_waking_then_nothing_raises() -> None:
    sock = bind_wake_socket()
    port = sock.getsockname()[1]
    sock.close()  # the worker process is restarting: the datagram is simply lost

    WakeSender(port).wake()
