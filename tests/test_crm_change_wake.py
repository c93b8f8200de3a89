"""CRM change datagrams between ``wacrm serve``'s server process and its worker process: a
``c <account> <object>`` datagram reaches the sync loop's ``notify_crm_change``, an inbox wake
still reaches only the inbox processor, and nothing malformed reaches anyone."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from wacrm.server.runtime import DownstreamOnly
from wacrm.workers.process import run_workers
from wacrm.workers.wake import (
    WakeSender,
    bind_wake_socket,
    crm_change_datagram,
    crm_change_listeners,
    parse_crm_change,
)


class Recording:
    def __init__(self, name: str) -> None:
        self.name = name
        self.wakes = 0
        self.changes: list[tuple[int, str]] = []

    def wake(self) -> None:
        self.wakes += 1

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()


class RecordingSync(Recording):
    def notify_crm_change(self, account_id: int, object: str = "contacts") -> None:
        self.changes.append((account_id, object))


async def _until(predicate: Callable[[], bool]) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.01)


async def test_given_crm_change_datagrams_then_only_the_sync_loop_hears_them() -> None:
    inbox, sync = Recording("inbox"), RecordingSync("sync")
    sock = bind_wake_socket()
    port = sock.getsockname()[1]
    sender = WakeSender(port)
    stop_runner = asyncio.create_task(run_workers([inbox, DownstreamOnly(sync)], sock))
    await asyncio.sleep(0.05)

    sender.notify_crm_change(7, "contacts")
    sender.notify_crm_change(8, "tickets")
    sender.wake()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        for junk in (b"c 7", b"c x contacts", b"c 1 Contacts; DROP", b"c 99999999999999999999 a"):
            raw.sendto(junk, ("127.0.0.1", port))
    await _until(lambda: len(sync.changes) >= 2 and inbox.wakes >= 1)
    await asyncio.sleep(0.05)  # let any stray datagram arrive
    stop_runner.cancel()

    assert sync.changes == [(7, "contacts"), (8, "tickets")]
    assert inbox.wakes == 1  # the plain wake only: CRM datagrams (valid or not) wake nothing
    assert sync.wakes == 0


def test_given_a_crm_change_then_the_datagram_round_trips_and_bad_ones_are_refused() -> None:
    assert parse_crm_change(crm_change_datagram(42, "contacts")) == (42, "contacts")
    assert parse_crm_change(b"w") is None
    with pytest.raises(ValueError):
        crm_change_datagram(-1, "contacts")
    with pytest.raises(ValueError):
        crm_change_datagram(1, "con tacts")


def test_given_workers_then_the_sync_loop_is_found_also_inside_a_wrapper() -> None:
    sync, sender = RecordingSync("sync"), WakeSender(9)
    found = crm_change_listeners([Recording("inbox"), DownstreamOnly(sync), sender])

    found[0](3, "contacts")

    assert len(found) == 2
    assert sync.changes == [(3, "contacts")]


def test_given_no_worker_process_listening_then_a_crm_change_is_dropped_quietly() -> None:
    sock = bind_wake_socket()
    port = sock.getsockname()[1]
    sock.close()  # restarting: the baseline read brings the change in later

    WakeSender(port).notify_crm_change(1, "contacts")
