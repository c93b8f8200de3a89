"""Starting and stopping the background workers, for the server's lifespan and for the
worker process alike: one task per worker, and a bounded stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from wacrm.workers.base import Worker

logger = logging.getLogger(__name__)


def start_workers(workers: Sequence[Worker], stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """One task per worker (named ``worker:<name>``), each running until ``stop`` is set."""
    return [asyncio.create_task(w.run(stop), name=f"worker:{w.name}") for w in workers]


async def stop_workers(
    tasks: Sequence[asyncio.Task[None]], stop: asyncio.Event, timeout: float
) -> None:
    """Set ``stop``, give ``tasks`` up to ``timeout`` seconds to finish, then cancel the rest
    and wait for them; what the tasks raised is theirs to report (not raised here)."""
    stop.set()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        logger.warning("%s did not stop in time; cancelling it", task.get_name())
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
