"""WhatsApp message activity in the CRM: inbound and outbound messages become one activity each
on their contact, outbound ones updated as statuses arrive, coalesced, batched, never urgent."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from sqlalchemy import Engine, select
from test_inbox_processor import (
    ALICE,
    NOW,
    PRICE_LIST,
    TS,
    Clock,
    envelope,
    from_,
    make_processor,
    sender,
    shipped_rules,
    status,
    store,
    text,
)
from whatsapp_support import Graph

from wacrm.config import ConfigError, Settings, load_settings
from wacrm.connectors.base import (
    TRUNCATION_MARKER,
    ChangePage,
    CheckResult,
    OutgoingRecord,
    RateLimit,
)
from wacrm.connectors.local import LocalConnector
from wacrm.model import InboundMessage, MessageType, WriteResult
from wacrm.sandbox.crm import CrmSimulator, SimConfig, SimResponse
from wacrm.sandbox.crm_transport import SimulatorTransport
from wacrm.store.outbox import enqueue_crm_change
from wacrm.store.schema import contacts, crm_outbox, local_crm_records
from wacrm.sync.engine import SyncEngine
from wacrm.sync.sim_connector import SimulatorConnector
from wacrm.sync.worker import SyncWorker
from wacrm.workers.crm_outbox import CrmOutboxWorker
from wacrm.workers.inbound import handle_message
from wacrm.workers.inbox import InboxProcessor
from wacrm.workers.message_activity import enqueue_activity

ALICE_KEY = "+16315551234"


class Recording:
    """The embedded CRM, with a log of every batch call: (object, [record keys])."""

    name: ClassVar[str] = "local"
    max_batch: ClassVar[int] = 100
    rate_limit: ClassVar[RateLimit] = RateLimit(1000, 1.0)

    def __init__(self, inner: LocalConnector) -> None:
        self.inner = inner
        self.calls: list[tuple[str, list[str]]] = []
        self.during_call: Any = None  # called with (object, records) before each write

    def check(self) -> CheckResult:
        return self.inner.check()

    def write_batch(self, object: str, records: Sequence[OutgoingRecord]) -> list[WriteResult]:
        self.calls.append((object, [r.key for r in records]))
        if self.during_call is not None:
            self.during_call(object, records)
        return self.inner.write_batch(object, records)

    def read_changes(self, object: str, cursor: Any, signpost: Any, limit: int) -> ChangePage:
        return self.inner.read_changes(object, cursor, signpost, limit)

    def objects_called(self) -> list[str]:
        return [obj for obj, _keys in self.calls]


def crm_records(engine: Engine, object: str) -> dict[str, dict[str, Any]]:
    t = local_crm_records
    with engine.connect() as conn:
        found = conn.execute(
            select(t.c.external_id, t.c.properties).where(t.c.object == object)
        ).all()
    return {row.external_id: orjson.loads(row.properties) for row in found}


def crm_contact_id(engine: Engine, key: str) -> int:
    t = local_crm_records
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(t.c.id).where(t.c.object == "contacts", t.c.external_id == key)
            ).scalar_one()
        )


def pending(engine: Engine, object: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(crm_outbox).where(
                    crm_outbox.c.object == object, crm_outbox.c.state == "pending"
                )
            ).all()
        )


def outbox_worker(engine: Engine, crm: Any, clock: Any) -> CrmOutboxWorker:
    return CrmOutboxWorker(engine, lambda _a: crm, clock=clock, rng=random.Random(1))


# -- inbound -------------------------------------------------------------------------------


def test_given_inbound_message_when_synced_then_one_activity_on_its_contact_in_embedded_crm(
    engine: Engine, account_id: int
) -> None:
    clock = Clock()
    processor = make_processor(engine, clock)
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.IN1", "hello there")))
    processor.process_pending()
    crm = Recording(LocalConnector(engine, account_id))

    outbox_worker(engine, crm, clock).flush(force=True)

    activity = crm_records(engine, "messages")["msg:wamid.IN1"]
    assert activity == {
        "direction": "inbound",
        "body": "hello there",
        "message_type": "text",
        "whatsapp_message_id": "wamid.IN1",
        "timestamp": "2025-11-25T09:00:00+00:00",
        "delivery_status": "received",
        "contact_id": crm_contact_id(engine, ALICE_KEY),
    }
    # The contact went first (its activity and ticket reference it), the activity last.
    assert crm.objects_called() == ["contacts", "tickets", "messages"]
    assert pending(engine, "messages") == []


def test_given_inbound_handled_again_after_a_flush_when_synced_again_then_still_one_activity(
    engine: Engine, account_id: int
) -> None:
    clock = Clock()
    crm = Recording(LocalConnector(engine, account_id))
    flusher = outbox_worker(engine, crm, clock)
    for _ in range(2):  # a redelivery that got past the inbox (e.g. a second provider id row)
        with engine.begin() as conn:
            handle_message(
                conn, account_id=account_id, message=_inbound("wamid.IN1", "hi"), raw={}, now=NOW
            )
        flusher.flush(force=True)

    assert crm.objects_called().count("messages") == 1
    assert list(crm_records(engine, "messages")) == ["msg:wamid.IN1"]


def test_given_inbound_image_and_location_when_queued_then_body_describes_them(
    engine: Engine, account_id: int
) -> None:
    clock = Clock()
    processor = make_processor(engine, clock)
    image: dict[str, Any] = {
        "id": "wamid.IMG",
        "timestamp": str(TS),
        "from": ALICE,
        "type": "image",
    }
    image["image"] = {"id": "media-1", "mime_type": "image/jpeg", "caption": "my receipt"}
    place: dict[str, Any] = {
        "id": "wamid.LOC",
        "timestamp": str(TS),
        "from": ALICE,
        "type": "location",
    }
    place["location"] = {"latitude": 51.5, "longitude": -0.12, "name": "Shop", "address": "High St"}
    store(engine, account_id, from_(ALICE, "Alice", image, place))
    processor.process_pending()

    bodies = {
        r.record_key: orjson.loads(r.payload)["properties"]["body"]
        for r in pending(engine, "messages")
    }
    assert bodies == {
        "msg:wamid.IMG": "[image] my receipt",
        "msg:wamid.LOC": "[location] Shop, High St (51.5, -0.12)",
    }


# -- outbound ------------------------------------------------------------------------------


def test_given_reply_when_statuses_arrive_then_activity_created_then_updated_coalesced(
    engine: Engine, account_id: int
) -> None:
    clock = Clock()
    graph = Graph()
    worker = sender(engine, graph)
    processor = make_processor(engine, clock, handover=worker)
    now_ts = int(NOW.timestamp())
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.A1", "price?", ts=now_ts)))
    processor.process_pending()
    assert worker.process_due() == 1  # the price list goes out as wamid.SCRIPTED1
    crm = Recording(LocalConnector(engine, account_id))
    flusher = outbox_worker(engine, crm, clock)
    flusher.flush(force=True)  # the contact, the ticket and the inbound activity
    crm.calls.clear()
    reply = "msg:wamid.SCRIPTED1"

    # sent and delivered, each reported more than once and out of order, before a flush
    for state in ("delivered", "sent", "sent", "delivered", "sent"):
        store(engine, account_id, _status_envelope("wamid.SCRIPTED1", state, now_ts))
    processor.process_pending()
    [row] = pending(engine, "messages")  # one pending change for all of them
    assert row.record_key == reply and row.urgent == 0
    flusher.flush(force=True)

    assert crm.calls == [("messages", [reply])]
    created = crm_records(engine, "messages")[reply]
    assert (created["direction"], created["delivery_status"]) == ("outbound", "delivered")
    assert (created["body"], created["message_type"]) == (PRICE_LIST, "text")
    assert created["contact_id"] == crm_contact_id(engine, ALICE_KEY)

    for state in ("read", "delivered", "read", "sent", "read"):
        store(engine, account_id, _status_envelope("wamid.SCRIPTED1", state, now_ts + 5))
    processor.process_pending()
    flusher.flush(force=True)

    assert crm.calls == [("messages", [reply]), ("messages", [reply])]
    records = crm_records(engine, "messages")
    assert records[reply]["delivery_status"] == "read"
    assert records[reply]["whatsapp_message_id"] == "wamid.SCRIPTED1"
    assert sorted(records) == ["msg:wamid.A1", reply]  # updated in place, not a second record


def test_given_failed_status_when_synced_then_activity_carries_error_code(
    engine: Engine, account_id: int
) -> None:
    clock = Clock()
    graph = Graph()
    worker = sender(engine, graph)
    processor = make_processor(engine, clock, handover=worker)
    now_ts = int(NOW.timestamp())
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.A1", "price?", ts=now_ts)))
    processor.process_pending()
    worker.process_due()
    error = {"code": 131026, "title": "Message undeliverable"}
    failed = status("wamid.SCRIPTED1", "failed", now_ts, errors=[error])
    store(engine, account_id, _envelope_of(failed))

    processor.process_pending()
    outbox_worker(engine, LocalConnector(engine, account_id), clock).flush(force=True)

    activity = crm_records(engine, "messages")["msg:wamid.SCRIPTED1"]
    assert (activity["delivery_status"], activity["error_code"]) == ("failed", "131026")
    assert activity["error_title"] == "Message undeliverable"


# -- the switch ----------------------------------------------------------------------------


def test_given_message_activity_switched_off_when_messages_and_statuses_then_no_activity(
    engine: Engine, account_id: int
) -> None:
    clock = Clock()
    graph = Graph()
    worker = sender(engine, graph)
    processor = InboxProcessor(
        engine,
        Settings(crm_message_activity=False),
        rules=shipped_rules(),
        clock=clock,
        handover=worker,
    )
    now_ts = int(NOW.timestamp())
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.A1", "price?", ts=now_ts)))
    processor.process_pending()
    worker.process_due()
    for state in ("sent", "delivered", "read"):
        store(engine, account_id, _status_envelope("wamid.SCRIPTED1", state, now_ts))
    processor.process_pending()
    crm = Recording(LocalConnector(engine, account_id))

    outbox_worker(engine, crm, clock).flush(force=True)

    assert pending(engine, "messages") == []
    assert crm.objects_called() == ["contacts", "tickets"]
    assert crm_records(engine, "messages") == {}


def test_given_switch_in_environment_when_loaded_then_false_means_off() -> None:
    assert Settings().crm_message_activity is True
    off = load_settings(env={"WACRM_CRM_MESSAGE_ACTIVITY": "false"}, toml_path=_nowhere())
    assert off.crm_message_activity is False
    on = load_settings(env={"WACRM_CRM_MESSAGE_ACTIVITY": "on"}, toml_path=_nowhere())
    assert on.crm_message_activity is True
    with pytest.raises(ConfigError, match="WACRM_CRM_MESSAGE_ACTIVITY must be true or false"):
        load_settings(env={"WACRM_CRM_MESSAGE_ACTIVITY": "maybe"}, toml_path=_nowhere())


# -- batches, limits, the trigger, the urgent path -----------------------------------------


class PathLog(CrmSimulator):
    """The simulator on simulated time (it moves only when the connector sleeps),
    remembering the path of every call."""

    def __init__(self) -> None:
        self.t = 0.0
        super().__init__(
            SimConfig(), clock=lambda: self.t, epoch_ms=lambda: 1_795_597_200_000 + int(self.t)
        )
        self.paths: list[str] = []

    def sleep(self, seconds: float) -> None:
        self.t += seconds

    def handle(self, method: str, path: str, body: Any) -> SimResponse:
        self.paths.append(path)
        return super().handle(method, path, body)


def simulator_connector(sim: PathLog) -> SimulatorConnector:
    return SimulatorConnector.connect(
        "http://crm.test",
        transport=SimulatorTransport(sim),
        monotonic=lambda: sim.t,
        sleep=sim.sleep,
        rng=random.Random(3),
    )


def test_given_250_activities_when_flushed_to_simulator_then_3_batch_calls_as_communications(
    engine: Engine, account_id: int
) -> None:
    clock = Clock()
    with engine.begin() as conn:
        for i in range(250):
            handle_message(
                conn,
                account_id=account_id,
                message=_inbound(f"wamid.N{i:03d}", f"message {i}"),
                raw={},
                now=NOW,
            )
    sim = PathLog()

    outbox_worker(engine, simulator_connector(sim), clock).flush(force=True)

    activity_calls = [p for p in sim.paths if "/communications/" in p]
    assert activity_calls == ["/crm/v3/objects/communications/batch/upsert"] * math.ceil(250 / 100)
    records = sim.records("communications")
    assert len(records) == 250
    one = next(r for r in records if r["properties"]["wacrm_key"] == "msg:wamid.N007")
    props = one["properties"]
    assert props["hs_communication_channel_type"] == "WHATS_APP"
    assert props["hs_communication_logged_from"] == "CRM"
    assert props["hs_communication_body"] == "message 7"
    assert props["hs_timestamp"] == "2025-11-25T09:00:00+00:00"
    assert props["wacrm_contact_key"] == ALICE_KEY
    assert pending(engine, "messages") == []


def test_given_body_over_the_property_limit_when_written_then_truncated_with_marker(
    engine: Engine, account_id: int
) -> None:
    clock = Clock()
    long_text = "x" * 70_000
    with engine.begin() as conn:
        handle_message(
            conn,
            account_id=account_id,
            message=_inbound("wamid.LONG", long_text),
            raw={},
            now=NOW,
        )
    sim = PathLog()

    # The simulator refuses a value over 65,536 characters; the connector must cut it first.
    outbox_worker(engine, simulator_connector(sim), clock).flush(force=True)
    [record] = sim.records("communications")
    body = record["properties"]["hs_communication_body"]
    assert len(body) == 65_536 and body.endswith(TRUNCATION_MARKER)
    with engine.connect() as conn:
        dead = conn.execute(select(crm_outbox).where(crm_outbox.c.state == "dead")).all()
    assert dead == []

    # The embedded CRM cuts it the same way.
    with engine.begin() as conn:
        enqueue_crm_change(
            conn,
            account_id=account_id,
            object="contacts",
            record_key=ALICE_KEY,
            properties={"phone": ALICE_KEY},
            now=NOW,
        )
        enqueue_activity(
            conn,
            account_id=account_id,
            provider_message_id="wamid.LONG",
            contact_key=ALICE_KEY,
            properties={"body": long_text},
            now=NOW,
        )
    outbox_worker(engine, LocalConnector(engine, account_id), clock).flush(force=True)
    local_body = crm_records(engine, "messages")["msg:wamid.LONG"]["body"]
    assert len(local_body) == 65_536 and local_body.endswith(TRUNCATION_MARKER)


def test_given_activities_for_half_the_contacts_when_flushed_then_threshold_not_fired(
    engine: Engine, account_id: int
) -> None:
    """The 5 % threshold is a share of contacts changed; 10 activities for 20 mirrored
    contacts are no reason to sync now, while 10 changed contacts are."""
    clock = Clock()
    with engine.begin() as conn:
        for i in range(20):
            conn.execute(
                contacts.insert().values(
                    account_id=account_id,
                    phone=f"+1444000{i:04d}",
                    tags="[]",
                    unread_count=0,
                    created_at=NOW,
                    updated_at=NOW,
                )
            )
        for i in range(10):
            enqueue_activity(
                conn,
                account_id=account_id,
                provider_message_id=f"wamid.T{i}",
                contact_key=f"+1444000{i:04d}",
                properties={"body": f"m{i}", "direction": "inbound"},
                now=NOW,
            )
    crm = Recording(LocalConnector(engine, account_id))
    flusher = outbox_worker(engine, crm, clock)

    flusher.flush()
    assert crm.calls == []  # not urgent, under a full batch, younger than the baseline

    with engine.begin() as conn:
        for i in range(10):
            enqueue_crm_change(
                conn,
                account_id=account_id,
                object="contacts",
                record_key=f"+1444000{i:04d}",
                properties={"phone": f"+1444000{i:04d}"},
                now=NOW,
            )
    flusher.flush()
    assert crm.calls == [("contacts", [f"+1444000{i:04d}" for i in range(10)])]  # 50 %: now
    assert len(pending(engine, "messages")) == 10  # they wait for their own reason

    clock.now = NOW + timedelta(minutes=29)
    flusher.flush()
    assert crm.objects_called() == ["contacts"]
    clock.now = NOW + timedelta(minutes=30)
    flusher.flush()
    assert crm.objects_called() == ["contacts", "messages"]  # the baseline: all in one call
    assert pending(engine, "messages") == []


@pytest.mark.parametrize("woken", ["outbox", "sync loop"])
def test_given_activity_backlog_draining_when_urgent_ticket_queued_then_it_goes_next(
    engine: Engine, account_id: int, woken: str
) -> None:
    """``wacrm serve`` runs the outbox inside the sync loop and wakes the loop: the drain
    must give way to that wake as it does to the outbox's own."""
    clock = Clock()
    with engine.begin() as conn:
        for i in range(250):
            handle_message(
                conn,
                account_id=account_id,
                message=_inbound(f"wamid.B{i:03d}", f"backlog {i}", ticket=False),
                raw={},
                now=NOW,
            )
    clock.now = NOW + timedelta(hours=1)  # the backlog is past the baseline: due
    crm = Recording(LocalConnector(engine, account_id))
    flusher = outbox_worker(engine, crm, clock)
    loop = SyncWorker(SyncEngine(engine, lambda _a: crm, flusher, clock=clock))
    wake = flusher.wake if woken == "outbox" else loop.wake

    def urgent_ticket_arrives(object: str, _records: Sequence[OutgoingRecord]) -> None:
        if object == "messages" and crm.objects_called().count("messages") == 1:
            with engine.begin() as conn:
                enqueue_crm_change(
                    conn,
                    account_id=account_id,
                    object="tickets",
                    record_key="wa:wamid.URGENT",
                    properties={"subject": "help", "status": "open"},
                    contact_key=ALICE_KEY,
                    urgent=True,
                    now=clock.now,
                )
            wake()

    crm.during_call = urgent_ticket_arrives
    flusher.flush()
    assert crm.objects_called() == ["contacts", "messages"]  # gave way after one batch

    flusher.flush()
    assert crm.objects_called() == ["contacts", "messages", "tickets", "messages", "messages"]
    assert len(crm_records(engine, "messages")) == 250


# -- helpers -------------------------------------------------------------------------------


def _inbound(wamid: str, body: str, *, ticket: bool = True) -> InboundMessage:
    return InboundMessage(
        provider="meta",
        provider_message_id=wamid,
        phone_number_id="106540352242922",
        from_wa_id=ALICE,
        from_user_id=None,
        profile_name="Alice",
        timestamp=NOW.replace(year=2025),
        # A reaction asks no agent: no ticket, so only contact and activity are queued.
        type=MessageType.TEXT if ticket else MessageType.REACTION,
        raw_type="text" if ticket else "reaction",
        text=body,
    )


def _status_envelope(wamid: str, state: str, ts: int) -> dict[str, Any]:
    return _envelope_of(status(wamid, state, ts))


def _envelope_of(event: dict[str, Any]) -> dict[str, Any]:
    return envelope(statuses=[event])


def _nowhere() -> Path:
    return Path("/nonexistent/wacrm.toml")
