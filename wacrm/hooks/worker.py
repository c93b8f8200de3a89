"""The REST-hook delivery worker: fans rule events out to subscriptions and POSTs them.

It runs on a thread of its own (:class:`~wacrm.workers.threaded.WorkerThread`). Each pass
fans out (when woken by the inbox processor after rules ran, or every ``poll_seconds``: the
rule timer emits too, and wakes nobody), then leases what is due and hands each POST to a
small pool of sender threads, without waiting for them: a slow target holds at most
``per_target`` senders for at most ``timeout`` seconds each, and the others go on. A POST
that ends wakes the worker, so a backlog drains as fast as the targets answer.

Every store write is its own short transaction; no transaction is open during a POST.
Subscription secrets are opened with the worker's :class:`~wacrm.store.secrets.SecretBox`;
while it has no key (``WACRM_SECRET_KEY`` unset on PostgreSQL), deliveries wait, with one
error line saying so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Engine

from wacrm import __version__
from wacrm.config import ConfigError, Settings
from wacrm.hooks.delivery import HOOK_POLICY, Job, claim, due_subscriptions, post, record
from wacrm.hooks.fanout import SETTLE, fan_out
from wacrm.hooks.targets import PublicOnlyTransport
from wacrm.store.secrets import SecretBox
from wacrm.sync.retry import RetryPolicy
from wacrm.workers.threaded import WorkerThread

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class HookDeliveryWorker:
    name = "hooks"

    def __init__(
        self,
        engine: Engine,
        client: httpx.Client | None = None,
        *,
        box: SecretBox,
        clock: Clock = _utcnow,
        rng: random.Random | None = None,
        policy: RetryPolicy = HOOK_POLICY,
        poll_seconds: float = 2.0,
        concurrency: int = 8,
        per_target: int = 2,
        timeout: float = 10.0,
        lease: timedelta = timedelta(minutes=5),
        settle: timedelta = SETTLE,
        allow_private_targets: bool = False,
    ) -> None:
        """``clock`` and ``rng`` (the backoff's jitter) are injectable so tests need neither
        a real clock nor sleeps; ``client`` too (default: one of our own, ``timeout``
        seconds per connect/read/write, redirects not followed, sending only to public
        addresses, pinned, unless ``allow_private_targets``: see
        :class:`~wacrm.hooks.targets.PublicOnlyTransport`; an injected client brings its own
        transport, and so its own guard). ``lease`` must outlast a POST (``timeout``): a
        delivery leased longer than that is taken as lost in a crash. ``box`` opens the
        subscriptions' secrets."""
        self._engine = engine
        self._box = box
        self._no_key_logged = False
        self._own_client = client is None
        self._client = client or httpx.Client(
            # An explicit transport also means HTTP(S)_PROXY is not used: a proxy would
            # resolve the name itself, out of the guard's sight.
            transport=None if allow_private_targets else PublicOnlyTransport(),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            follow_redirects=False,
            headers={"User-Agent": f"wacrm/{__version__} (REST hooks)"},
        )
        self._clock = clock
        self._rng = rng or random.Random()
        self._policy = policy
        self._poll = poll_seconds
        self._concurrency = concurrency
        self._per_target = per_target
        self._lease = lease
        self._settle = settle
        self._thread = WorkerThread(self.name, self._step)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="hooks-post"
        )
        self._lock = threading.Lock()
        self._in_flight: dict[int, int] = {}  # subscription id -> POSTs under way
        self._new_events = True  # fan out on the first pass
        self._fanned_out_at = float("-inf")  # time.monotonic()

    @classmethod
    def from_settings(cls, engine: Engine, settings: Settings, **kwargs: Any) -> HookDeliveryWorker:
        """The worker with the secret key of ``settings`` (read when first needed) and its
        ``hooks_allow_private_targets``."""
        kwargs.setdefault("allow_private_targets", settings.hooks_allow_private_targets)
        return cls(engine, box=SecretBox.from_settings(settings), **kwargs)

    # -- Worker protocol ---------------------------------------------------------------

    def wake(self) -> None:
        """Rules may have emitted events: fan out now. Safe from any thread."""
        self._new_events = True
        self._thread.wake()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._thread.run(stop)
        finally:
            await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Wait for the POSTs under way (each ends within the timeout); leased deliveries
        not yet sent are sent after their lease by whoever runs next."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._own_client:
            self._client.close()

    # -- passes ------------------------------------------------------------------------

    def run_once(self) -> int:
        """One pass, waiting for its POSTs and their outcomes; returns how many were sent.
        (For tests and commands; the running worker does not wait.)"""
        futures = self._pass()
        concurrent.futures.wait(futures)
        for future in futures:
            future.result()
        return len(futures)

    def _step(self) -> float:
        try:
            self._pass()
        except Exception:  # a store outage must not end the loop; the next pass retries
            logger.exception("hook delivery pass failed; retrying after the poll interval")
        return self._poll

    def _pass(self) -> list[concurrent.futures.Future[None]]:
        now = self._clock()
        if self._new_events or time.monotonic() - self._fanned_out_at >= self._poll:
            self._new_events = False  # before: events emitted during the fan-out wake again
            fan_out(self._engine, now, settle=self._settle)
            self._fanned_out_at = time.monotonic()
        with self._lock:
            busy = {sid for sid, n in self._in_flight.items() if n >= self._per_target}
            free = self._concurrency - sum(self._in_flight.values())
        if free <= 0:
            return []
        futures: list[concurrent.futures.Future[None]] = []
        due = due_subscriptions(self._engine, now, exclude=busy, limit=self._concurrency)
        if due and not self._keys_ready():
            return futures
        for sid in due:
            with self._lock:
                room = min(
                    self._per_target - self._in_flight.get(sid, 0),
                    self._concurrency - sum(self._in_flight.values()),
                )
            if room <= 0:
                continue
            jobs = claim(self._engine, sid, now, box=self._box, lease=self._lease, limit=room)
            for job in jobs:
                with self._lock:
                    self._in_flight[sid] = self._in_flight.get(sid, 0) + 1
                futures.append(self._pool.submit(self._deliver, job))
        return futures

    def _keys_ready(self) -> bool:
        """Whether the box has its key; if not, deliveries wait (logged once, not per pass)."""
        try:
            self._box.ready()
        except ConfigError as exc:
            if not self._no_key_logged:
                logger.error("hook deliveries wait, their secrets cannot be opened: %s", exc)
                self._no_key_logged = True
            return False
        self._no_key_logged = False
        return True

    def _deliver(self, job: Job) -> None:
        try:
            outcome = post(self._client, job, self._clock())
            state = record(
                self._engine, job, outcome, self._clock(), policy=self._policy, rng=self._rng
            )
            if state == "pending" and outcome.refused:
                # Host and class of address only, never the URL nor the address.
                logger.warning(
                    "hook delivery %s (subscription %s) not sent, tried again later: %s",
                    job.delivery_id,
                    job.subscription_id,
                    outcome.error,
                )
            elif state == "dead":
                # Ids only: target URLs are often capabilities, and never logged.
                logger.warning(
                    "hook delivery %s (subscription %s, event %s) is dead: %s",
                    job.delivery_id,
                    job.subscription_id,
                    job.event_id,
                    outcome.error,
                )
        except Exception:  # the store failed: the lease ends, and it is sent again
            logger.exception("hook delivery %s not recorded; retried later", job.delivery_id)
        finally:
            with self._lock:
                left = self._in_flight.get(job.subscription_id, 1) - 1
                if left > 0:
                    self._in_flight[job.subscription_id] = left
                else:
                    self._in_flight.pop(job.subscription_id, None)
            self._thread.wake()  # a sender is free: more may be due
