"""Waking the worker process when the server process has committed webhooks.

``wacrm serve`` answers webhooks in one process and runs the workers (inbox processor,
outboxes, sync) in another, so processing never takes the GIL from ingest. A wake is a hint:
one loopback UDP datagram per committed group, sent without blocking; a lost datagram only
means the processor finds the rows at its next poll. UDP on 127.0.0.1 needs no set-up, works
for any number of server processes, and costs a few microseconds per commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)

WAKE_PORT_ENV = "WACRM_WAKE_PORT"
_DATAGRAM = b"w"


def bind_wake_socket(host: str = "127.0.0.1") -> socket.socket:
    """A non-blocking UDP socket on a free loopback port, for the worker process to read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


class WakeSender:
    """Stands in the server process's worker list: ``wake()`` after a commit sends one
    datagram to the worker process. ``run`` only waits, so it fits the Worker protocol."""

    name = "wake-sender"

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self._address = (host, port)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def wake(self) -> None:
        # A full buffer or a restarting worker process: drop it, the poll picks the rows up.
        with contextlib.suppress(OSError):
            self._sock.sendto(_DATAGRAM, self._address)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await stop.wait()
        finally:
            self._sock.close()


class _WakeProtocol(asyncio.DatagramProtocol):
    def __init__(self, targets: Sequence[Callable[[], None]]) -> None:
        self._targets = tuple(targets)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        for wake in self._targets:
            wake()


async def listen_for_wakes(
    sock: socket.socket, targets: Sequence[Callable[[], None]], stop: asyncio.Event
) -> None:
    """Call every target's wake for each datagram on ``sock`` until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _WakeProtocol(targets), sock=sock)
    try:
        await stop.wait()
    finally:
        transport.close()
