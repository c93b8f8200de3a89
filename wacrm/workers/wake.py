"""Waking the worker process when the server process has committed webhooks.

``wacrm serve`` answers webhooks in one process and runs the workers (inbox processor,
outboxes, sync) in another, so processing never takes the GIL from ingest. A wake is a hint:
one loopback UDP datagram per committed group, sent without blocking; a lost datagram only
means the processor finds the rows at its next poll. UDP on 127.0.0.1 needs no set-up, works
for any number of server processes, and costs a few microseconds per commit.

Two kinds of datagram:

- ``w`` (or anything that is not the next kind): new inbox rows; wakes the inbox processor.
- ``c <account id> <object>``: a CRM change webhook arrived for that account and object; the
  sync loop's ``notify_crm_change`` reads its changes now. Lost, it costs latency only: the
  sync loop's baseline read (every 30 min by default) still brings the change in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Callable, Iterable, Sequence

logger = logging.getLogger(__name__)

WAKE_PORT_ENV = "WACRM_WAKE_PORT"
_DATAGRAM = b"w"
_CRM_KIND = b"c "
_CRM_DATAGRAM = re.compile(rb"c (\d{1,18}) ([a-z_]{1,40})")

CrmNotify = Callable[[int, str], None]
"""``notify_crm_change(account_id, object)``: a CRM change webhook arrived."""


def crm_change_datagram(account_id: int, object: str) -> bytes:
    datagram = b"c %d %s" % (account_id, object.encode("ascii"))
    if _CRM_DATAGRAM.fullmatch(datagram) is None:
        raise ValueError(f"not a CRM change: account {account_id!r}, object {object!r}")
    return datagram


def parse_crm_change(data: bytes) -> tuple[int, str] | None:
    """(account id, object) of a CRM change datagram; None if it is not a valid one."""
    match = _CRM_DATAGRAM.fullmatch(data)
    if match is None:
        return None
    return int(match[1]), match[2].decode("ascii")


def crm_change_listeners(workers: Iterable[object]) -> list[CrmNotify]:
    """The ``notify_crm_change`` of every worker that takes CRM change notices (the sync
    loop; in a server process whose workers run elsewhere, the :class:`WakeSender`), also
    when a wrapper holds it as ``.worker`` (``DownstreamOnly``)."""
    found: list[CrmNotify] = []
    for worker in workers:
        for candidate in (worker, getattr(worker, "worker", None)):
            notify = getattr(candidate, "notify_crm_change", None)
            if callable(notify):
                found.append(notify)
                break
    return found


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

    def notify_crm_change(self, account_id: int, object: str = "contacts") -> None:
        """Tell the worker process's sync loop to read ``object`` of ``account_id`` now.
        Dropped like a wake if it cannot be sent: the baseline read brings the change."""
        datagram = crm_change_datagram(account_id, object)
        with contextlib.suppress(OSError):
            self._sock.sendto(datagram, self._address)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await stop.wait()
        finally:
            self._sock.close()


class _WakeProtocol(asyncio.DatagramProtocol):
    def __init__(
        self, targets: Sequence[Callable[[], None]], crm_targets: Sequence[CrmNotify] = ()
    ) -> None:
        self._targets = tuple(targets)
        self._crm_targets = tuple(crm_targets)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if data.startswith(_CRM_KIND):
            self._crm_change(data)
            return
        for wake in self._targets:
            wake()

    def _crm_change(self, data: bytes) -> None:
        change = parse_crm_change(data)
        if change is None:
            logger.warning("ignored a malformed CRM change datagram (%d bytes)", len(data))
            return
        for notify in self._crm_targets:
            try:
                notify(*change)
            except Exception:  # a hint: the baseline read still brings the change in
                logger.exception("CRM change for account %d could not be announced", change[0])


async def listen_for_wakes(
    sock: socket.socket,
    targets: Sequence[Callable[[], None]],
    stop: asyncio.Event,
    crm_targets: Sequence[CrmNotify] = (),
) -> None:
    """Until ``stop`` is set: for each inbox datagram on ``sock`` call every target's wake;
    for each CRM change datagram, every ``crm_targets`` with its account and object."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _WakeProtocol(targets, crm_targets), sock=sock
    )
    try:
        await stop.wait()
    finally:
        transport.close()
