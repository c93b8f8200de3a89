"""The worker process: every background worker in one process of its own, supervised.

``wacrm serve`` keeps webhook ingest alone in its process. Processing a message (contact,
ticket, rules, language detection) costs milliseconds of Python; run beside ingest it would
take the GIL from the event loop that answers Meta and ingest would fall from >10,000 to a few
hundred webhooks/s. Here the workers get the other core, read the same durable inbox, and are
woken by a loopback datagram (:mod:`wacrm.workers.wake`) when new rows are committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence

from wacrm.workers.base import Worker
from wacrm.workers.supervise import start_workers, stop_workers
from wacrm.workers.wake import crm_change_listeners, listen_for_wakes

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 15.0
_INGEST_WOKEN = frozenset({"inbox"})  # workers that new inbox rows concern


async def _stop_when_orphaned(stop: asyncio.Event, every: float = 1.0) -> None:
    """Stop when the server process is gone. It may die without stopping us (uvicorn
    re-raises SIGTERM after its shutdown, a SIGKILL), and a second set of workers must not
    outlive it: the restarted server would start its own."""
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            logger.warning("server process %d is gone; stopping the workers", parent)
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def run_workers(
    workers: Sequence[Worker], wake_sock: socket.socket | None, *, watch_parent: bool = False
) -> None:
    """Run ``workers`` until SIGTERM/SIGINT (or, with ``watch_parent``, the parent's exit);
    wake the inbox processor on each inbox datagram, the sync loop on each CRM change one."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tasks = start_workers(workers, stop)
    if watch_parent:
        tasks.append(asyncio.create_task(_stop_when_orphaned(stop), name="parent-watch"))
    if wake_sock is not None:
        targets = [w.wake for w in workers if w.name in _INGEST_WOKEN]
        crm = crm_change_listeners(workers)  # CRM change datagrams go to the sync loop
        tasks.append(asyncio.create_task(listen_for_wakes(wake_sock, targets, stop, crm)))
    done, _ = await asyncio.wait(
        [asyncio.create_task(stop.wait()), *tasks], return_when=asyncio.FIRST_COMPLETED
    )
    for task in done:
        if task in tasks and not task.cancelled() and task.exception() is not None:
            logger.error("%s crashed: %s", task.get_name(), task.exception())
    await stop_workers(tasks, stop, STOP_TIMEOUT)


class WorkerProcess:
    """Starts ``wacrm worker`` as a child, restarts it if it dies, stops it on request."""

    def __init__(self, wake_sock: socket.socket, max_backoff: float = 30.0) -> None:
        self._wake_sock = wake_sock
        self._max_backoff = max_backoff
        self._stopping = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self.restarts = 0

    def _spawn(self) -> subprocess.Popen[bytes]:
        fd = self._wake_sock.fileno()
        return subprocess.Popen(
            [sys.executable, "-m", "wacrm.cli", "worker", "--wake-fd", str(fd)],
            pass_fds=(fd,),
        )

    def start(self) -> None:
        self._proc = self._spawn()
        self._thread = threading.Thread(
            target=self._supervise, name="worker-supervisor", daemon=True
        )
        self._thread.start()

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            proc = self._proc
            assert proc is not None
            code = proc.wait()
            if self._stopping.is_set():
                return
            # Nothing is lost while it is down: rows wait in the inbox and outboxes.
            logger.error("worker process exited with %s; restarting in %.0f s", code, backoff)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, self._max_backoff)
            self.restarts += 1
            self._proc = self._spawn()

    def stop(self) -> None:
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.warning("worker process did not stop in %.0f s; killing it", STOP_TIMEOUT)
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(5)
        self._wake_sock.close()
