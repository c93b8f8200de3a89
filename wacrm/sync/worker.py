"""The sync loop that runs inside ``wacrm serve`` (and ``wacrm sync`` without ``--once``).

Each tick: read at once what a CRM change webhook announced, flush the outbox when the
change-threshold trigger says so, and read every account's CRM changes on the baseline
interval. Webhooks and urgent writes wake the loop, so neither waits for the next poll.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from wacrm.sync.engine import INBOUND_OBJECTS, SyncEngine, all_accounts
from wacrm.sync.trigger import TriggerPolicy, inbound_due
from wacrm.workers.async_wake import AsyncSleep, WakeLoop
from wacrm.workers.crm_outbox import Clock, utcnow

logger = logging.getLogger(__name__)
PULL_RETRY_SECONDS = 60.0


class SyncWorker:
    name = "sync"

    def __init__(
        self,
        sync: SyncEngine,
        *,
        accounts: Callable[[], list[int]] | None = None,
        clock: Clock = utcnow,
        sleep: AsyncSleep = asyncio.sleep,
        trigger: TriggerPolicy | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        self.sync = sync
        self._accounts = accounts or (lambda: all_accounts(sync.outbox.engine))
        self._clock = clock
        self._trigger = trigger or TriggerPolicy()
        self._poll_interval = poll_interval
        self._lock = threading.Lock()
        self._announced: set[tuple[int, str]] = set()
        self._last_pull: dict[tuple[int, str], datetime] = {}
        self._wakes = WakeLoop(sleep)

    def wake(self) -> None:
        """New work is committed (or announced); safe from any thread."""
        self._wakes.wake()
        # The outbox flushes inside this loop's ticks, never on a loop of its own, so its
        # wake is only the flag its background drain (message activities) gives way to.
        self.sync.outbox.wake()

    def notify_crm_change(self, account_id: int, object: str = "contacts") -> None:
        """A CRM change webhook arrived for ``account_id``: read its changes now."""
        with self._lock:
            self._announced.add((account_id, object))
        self.wake()

    async def run(self, stop: asyncio.Event) -> None:
        await self._wakes.run(stop, self._pass)

    async def _pass(self) -> float:
        try:
            await asyncio.to_thread(self.tick)
        except Exception:  # a bug or a store outage must not end the loop
            logger.exception("sync tick failed; retrying after the poll interval")
        return self._poll_interval

    def tick(self) -> None:
        with self._lock:
            announced, self._announced = self._announced, set()
        # What a webhook announced first: that is the latency people notice.
        for account_id, obj in sorted(announced):
            self._pull(account_id, obj)
        self.sync.outbox.flush()
        now = self._clock()
        for account_id in self._accounts():
            for obj in INBOUND_OBJECTS:
                last = self._last_pull.get((account_id, obj))
                if inbound_due(self._trigger, last, now) is not None:
                    self._pull(account_id, obj)

    def _pull(self, account_id: int, obj: str) -> None:
        started = self._clock()
        try:
            self.sync.pull(account_id, obj)
        except Exception as exc:
            logger.warning("account %s: reading %s failed: %s", account_id, obj, str(exc)[:200])
            # Try again in a minute rather than on every tick (or only after 30 min).
            started += timedelta(seconds=PULL_RETRY_SECONDS) - self._trigger.baseline
        self._last_pull[(account_id, obj)] = started
