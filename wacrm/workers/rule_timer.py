"""The durable timer for time-based rules ("no reply for N hours").

Nothing is scheduled in memory: what is due is read from the store on every tick (contacts
and their messages say who is waiting, ``rule_firings`` says who was reminded), so a restart
neither loses a reminder nor repeats one, and a tick that comes late (the server was down
at hour 48) still fires at hour 60. Each episode is handled in its own short transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from wacrm.rules.actions import apply_actions
from wacrm.rules.episodes import Episode, due_episodes
from wacrm.rules.events import NoReplyEvent
from wacrm.rules.runtime import RuleRuntime, read_contact
from wacrm.rules.schema import NoReply, Rule
from wacrm.workers.async_wake import AsyncSleep, WakeLoop

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# A conversation unanswered for this long past its rule's delay is no longer reminded of;
# it bounds each tick's scan. Downtime shorter than this loses no reminder.
MAX_LATENESS = timedelta(days=30)


def utcnow() -> datetime:
    return datetime.now(UTC)


class RuleTimer:
    """Fires due time-based rules; :meth:`tick` is synchronous, :meth:`run` loops."""

    name = "rule_timer"

    def __init__(
        self,
        engine: Engine,
        runtime: RuleRuntime,
        *,
        clock: Clock = utcnow,
        sleep: AsyncSleep = asyncio.sleep,
        poll_interval: float = 60.0,
        page_size: int = 200,
        max_lateness: timedelta = MAX_LATENESS,
    ) -> None:
        self._engine = engine
        self._runtime = runtime
        self._clock = clock
        self._poll_interval = poll_interval
        self._page_size = page_size
        self._max_lateness = max_lateness
        self._wakes = WakeLoop(sleep)

    # -- Worker protocol --------------------------------------------------------------

    def wake(self) -> None:
        """Rules or clocks changed: look now. Safe from any thread."""
        self._wakes.wake()

    async def run(self, stop: asyncio.Event) -> None:
        await self._wakes.run(stop, self._pass)

    async def _pass(self) -> float:
        try:
            await asyncio.to_thread(self.tick, self._clock())
        except Exception:  # a store outage must not end the loop; the next tick retries
            logger.exception("rule timer tick failed; retrying after the poll interval")
        return self._poll_interval

    # -- ticking ----------------------------------------------------------------------

    def tick(self, now: datetime) -> int:
        """Fire every time-based rule due at ``now``; returns the number of firings."""
        fired = 0
        for rule in self._runtime.ruleset.enabled("no_reply"):
            fired += self._tick_no_reply(rule, now)
        return fired

    def _tick_no_reply(self, rule: Rule, now: datetime) -> int:
        assert isinstance(rule.trigger, NoReply)
        cutoff = now - rule.trigger.delay
        since = cutoff - self._max_lateness
        fired, after_id = 0, 0
        while True:
            with self._engine.connect() as conn:
                page = due_episodes(
                    conn,
                    rule=rule.name,
                    cutoff=cutoff,
                    since=since,
                    after_id=after_id,
                    limit=self._page_size,
                )
            for episode in page:
                try:
                    fired += self._fire(rule, episode, now)
                except Exception:  # one bad contact must not hold up the others
                    logger.exception(
                        "rule %s for contact %s failed; retried next tick",
                        rule.name,
                        episode.contact_id,
                    )
            if len(page) < self._page_size:
                return fired
            # Episodes whose conditions do not hold now (e.g. outside business hours) stay
            # due; paging by id keeps one tick from looking at them twice.
            after_id = page[-1].message_id

    def _fire(self, rule: Rule, episode: Episode, now: datetime) -> int:
        with self._engine.begin() as conn:
            found = read_contact(conn, episode.account_id, episode.contact_id)
            # Re-read under the contact's lock: an answer may have arrived since the scan.
            if found is None or found[1].awaiting_since_id != episode.message_id:
                return 0
            row, view = found
            event = NoReplyEvent(episode.message_id, episode.since)
            planned = self._runtime.engine.evaluate(event, view, now, only={rule.name})
            done = apply_actions(
                conn, episode.account_id, episode.contact_id, planned, now, contact_row=row
            )
        return 1 if done else 0
