"""The sync engine against the CRM simulator: call count, pace, faults, webhooks.

In process, time is simulated: the simulator's rolling window, the rate budget and the
outbox's retry schedule all read one clock that moves only when something sleeps, so these
tests measure pace and 429s without waiting for them.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, func, select
from test_sync_fakes import T0

from wacrm.sandbox.crm import CrmSimulator, Faults, SimConfig
from wacrm.sandbox.crm_transport import SimulatorTransport
from wacrm.store.outbox import enqueue_crm_change
from wacrm.store.schema import contacts, crm_outbox
from wacrm.sync.engine import PullStats, SyncEngine
from wacrm.sync.sim_connector import SimulatorConnector
from wacrm.sync.webhooks import foreign_changes
from wacrm.sync.worker import SyncWorker
from wacrm.workers.crm_outbox import CrmOutboxWorker

EPOCH_MS = 1_795_597_200_000


class World:
    """One simulated clock for the simulator, the connector and the outbox."""

    def __init__(self, faults: float = 0.0, seed: int = 11) -> None:
        self.t = 0.0
        self.sim = CrmSimulator(
            SimConfig(faults=Faults(rate=faults), seed=seed),
            clock=lambda: self.t,
            epoch_ms=lambda: EPOCH_MS + int(self.t * 1000),
        )
        self.crm = SimulatorConnector.connect(
            "http://crm.test",
            transport=SimulatorTransport(self.sim),
            monotonic=lambda: self.t,
            sleep=self.sleep,
            rng=random.Random(seed),
        )

    def sleep(self, seconds: float) -> None:
        self.t += seconds

    def now(self) -> Any:
        return T0 + timedelta(seconds=self.t)

    def outbox(self, engine: Engine) -> CrmOutboxWorker:
        return CrmOutboxWorker(engine, lambda _a: self.crm, clock=self.now, rng=random.Random(1))


def _enqueue_contacts(engine: Engine, account_id: int, n: int, now: Any, version: int) -> None:
    with engine.begin() as conn:
        for i in range(n):
            enqueue_crm_change(
                conn,
                account_id=account_id,
                object="contacts",
                record_key=f"+1444{i:07d}",
                properties={"unread_count": version, "name": f"c{i}"},
                now=now,
            )


def _drain(world: World, outbox: CrmOutboxWorker, engine: Engine, limit: int = 500) -> None:
    """Flush until the outbox is empty, letting simulated time pass for backoffs."""
    for _ in range(limit):
        outbox.flush(force=True)
        with engine.connect() as conn:
            waiting = conn.execute(
                select(func.min(crm_outbox.c.next_attempt_at)).where(
                    crm_outbox.c.state == "pending"
                )
            ).scalar()
        if waiting is None:
            return
        world.t = max(world.t, (waiting - T0).total_seconds())
    raise AssertionError("the outbox did not drain")


def test_given_3000_changes_without_faults_then_calls_pace_and_429s_meet_the_bound(
    engine: Engine, account_id: int
) -> None:
    world = World()
    n = 3000
    _enqueue_contacts(engine, account_id, n, world.now(), 1)

    confirmed = world.outbox(engine).flush(force=True)

    calls = world.sim.calls["total"]
    bound = 110 / 10.0 * 100  # records per second the rate limit allows
    assert confirmed == n
    assert calls <= 1.01 * math.ceil(n / 100)
    assert world.sim.calls["429"] / calls < 0.01
    assert n / world.t >= 0.95 * bound


def test_given_10_percent_faults_then_every_record_arrives_exactly_once_with_latest_values(
    engine: Engine, account_id: int
) -> None:
    world = World(faults=0.10)
    n = 3000
    _enqueue_contacts(engine, account_id, n, world.now(), 1)
    outbox = world.outbox(engine)
    outbox.flush(force=True)
    _enqueue_contacts(engine, account_id, n // 3, world.now(), 2)  # changes arrive meanwhile

    _drain(world, outbox, engine)

    records = world.sim.records("contacts")
    by_key = {r["properties"]["wacrm_key"]: r for r in records}
    assert len(records) == n == len(by_key)
    assert max(world.sim.creates.values()) == 1
    assert all(
        by_key[f"+1444{i:07d}"]["properties"]["whatsapp_unread_count"] == (2 if i < n // 3 else 1)
        for i in range(n)
    )
    faults = sum(v for k, v in world.sim.calls.items() if k.count(":") == 1)
    assert faults > 0  # the faults really happened
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(crm_outbox)).scalar() == 0


async def test_given_a_crm_edit_when_its_webhook_arrives_then_the_mirror_has_it_without_waiting(
    engine: Engine, account_id: int
) -> None:
    world = World()
    phone = "+14440000001"
    with engine.begin() as conn:
        conn.execute(
            contacts.insert().values(
                account_id=account_id,
                phone=phone,
                created_at=world.now(),
                updated_at=world.now(),
            )
        )
    outbox = world.outbox(engine)
    worker = SyncWorker(
        SyncEngine(engine, lambda _a: world.crm, outbox, clock=world.now),
        accounts=lambda: [account_id],
        clock=world.now,
        sleep=_forever,
    )
    pulled = threading.Event()
    real_pull = worker.sync.pull

    def pull(account_id: int, object: str = "contacts") -> PullStats:
        stats = real_pull(account_id, object)
        if stats.mirror.applied:
            pulled.set()
        return stats

    worker.sync.pull = pull  # type: ignore[method-assign]
    app_id = str(world.sim.config.app_id)

    def wake(events: list[dict[str, Any]]) -> None:
        for _portal, obj in foreign_changes(events, own_app_id=app_id):
            worker.notify_crm_change(account_id, obj)

    world.sim.subscribe(wake)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(0)  # the first (baseline) tick runs, then the loop waits
    started = world.t

    world.sim.edit("contacts", phone, {"priority": "high", "order_status": "SHIPPED"})
    assert await asyncio.to_thread(pulled.wait, 10)
    stop.set()
    await asyncio.wait_for(task, 10)

    with engine.connect() as conn:
        row = conn.execute(select(contacts).where(contacts.c.phone == phone)).one()
    assert (row.priority, row.order_status_code) == ("high", "SHIPPED")
    assert world.t - started < 2.0  # no simulated waiting between webhook and mirror


def test_given_events_from_our_own_writes_then_they_trigger_no_read() -> None:
    events = [
        {
            "subscriptionType": "contact.propertyChange",
            "portalId": 1,
            "changeSource": "INTEGRATION",
            "sourceId": "77",
        },
        {
            "subscriptionType": "ticket.creation",
            "portalId": 1,
            "changeSource": "CRM_UI",
            "sourceId": "userId:1",
        },
    ]

    assert foreign_changes(events, own_app_id="77") == {("1", "tickets")}


async def _forever(_seconds: float) -> None:
    await asyncio.Event().wait()
