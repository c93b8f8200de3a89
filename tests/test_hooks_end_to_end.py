"""A real rule run's event reaching a real HTTP receiver on loopback, signed as documented;
the running worker woken by the processor; slow and silent targets. Loopback is private:
every subscription and worker here allows private targets (WACRM_HOOKS_ALLOW_PRIVATE_TARGETS)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import orjson
from conftest import PHONE_NUMBER_ID
from hooks_support import BOX, NOW, Answer, Clock, Receiver, deliveries, emit
from sqlalchemy import Engine

from wacrm.config import Settings
from wacrm.hooks.delivery import verify
from wacrm.hooks.subscriptions import subscribe
from wacrm.hooks.worker import HookDeliveryWorker
from wacrm.rules.loader import load_ruleset
from wacrm.rules.runtime import RuleRuntime
from wacrm.store.inbox import InboxRow, insert_inbox_rows
from wacrm.whatsapp.meta_webhook import split_envelope
from wacrm.workers.inbox import InboxProcessor

ALICE = "16315551234"


def customer_writes(engine: Engine, account_id: int, wamid: str, text: str) -> None:
    """What the server stores for a Meta webhook with one text message from Alice."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
        "contacts": [{"profile": {"name": "Alice"}, "wa_id": ALICE}],
        "messages": [
            {
                "from": ALICE,
                "id": wamid,
                "timestamp": str(int(NOW.timestamp())),
                "type": "text",
                "text": {"body": text},
            }
        ],
    }
    doc = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}],
    }
    rows = [
        InboxRow(
            account_id, "meta", e.kind, e.event_id or "", orjson.dumps(e.payload).decode(), NOW
        )
        for e in split_envelope(doc)
    ]
    with engine.begin() as conn:
        insert_inbox_rows(conn, rows)


def processor(engine: Engine, clock: Clock, **kwargs: Any) -> InboxProcessor:
    rules = RuleRuntime(load_ruleset(), values={"price_list": "Starter 9.99 USD"})
    return InboxProcessor(engine, Settings(), rules=rules, clock=clock, **kwargs)


def receiver_check(secret: str, headers: dict[str, str], raw: bytes, now: float) -> bool:
    """The recipe of wacrm/hooks/delivery.py's docstring, written as a receiver would."""
    timestamp = headers["X-Wacrm-Timestamp"]
    expected = (
        "sha256="
        + hmac.new(secret.encode(), timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
    )
    fresh = abs(now - int(timestamp)) <= 300
    return fresh and hmac.compare_digest(expected, headers["X-Wacrm-Signature"])


def test_given_handover_rule_fired_when_worker_runs_then_receiver_gets_verifiable_event(
    engine: Engine, account_id: int
) -> None:
    clock = Clock()
    with Receiver().running() as receiver:
        new = subscribe(
            engine, account_id, "handover", receiver.url("/zap/1"), NOW, box=BOX, allow_private=True
        )
        customer_writes(engine, account_id, "wamid.H1", "price? I want a human please")
        processor(engine, clock).process_pending()
        worker = HookDeliveryWorker(engine, box=BOX, clock=clock, allow_private_targets=True)
        try:
            assert worker.run_once() == 1
        finally:
            worker.close()

    [got] = receiver.requests
    assert got.path == "/zap/1"
    secret = new.secret.reveal()
    assert receiver_check(secret, got.headers, got.body, NOW.timestamp())
    assert verify(
        secret,
        got.headers["X-Wacrm-Timestamp"],
        got.body,
        got.headers["X-Wacrm-Signature"],
        now=NOW.timestamp(),
    )
    # A tampered body, another secret or a replay an hour later do not verify.
    assert not receiver_check(
        secret, got.headers, got.body.replace(b"Alice", b"Mallory"), NOW.timestamp()
    )
    assert not receiver_check("0" * 64, got.headers, got.body, NOW.timestamp())
    assert not receiver_check(secret, got.headers, got.body, NOW.timestamp() + 3600)
    doc = orjson.loads(got.body)
    assert (doc["event"], doc["rule"]) == ("handover", "human-handover")
    assert got.headers["X-Wacrm-Event-Id"] == str(doc["id"])
    assert doc["contact"]["phone"] == "+16315551234"
    assert doc["contact"]["tags"] == ["handover"] and doc["contact"]["priority"] == "high"
    assert doc["data"]["note"] == "asked for a person (human)"
    [row] = deliveries(engine)
    assert (row.state, row.last_status, row.attempts) == ("delivered", 200, 1)


async def test_given_running_worker_when_processor_runs_rules_then_it_wakes_and_delivers(
    engine: Engine, account_id: int
) -> None:
    clock = Clock()
    # A poll far away: only the processor's wake can explain a prompt delivery.
    worker = HookDeliveryWorker(
        engine, box=BOX, clock=clock, poll_seconds=600, allow_private_targets=True
    )
    stop = asyncio.Event()
    with Receiver().running() as receiver:
        subscribe(engine, account_id, "*", receiver.url(), NOW, box=BOX, allow_private=True)
        inbox = processor(engine, clock, downstream=(worker.wake,))
        tasks = [asyncio.create_task(w.run(stop)) for w in (worker, inbox)]
        await asyncio.sleep(0.2)  # their first passes find nothing
        customer_writes(engine, account_id, "wamid.H2", "can I talk to a human?")
        inbox.wake()  # as the webhook does

        for _ in range(100):
            if receiver.requests:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    assert [orjson.loads(r.body)["event"] for r in receiver.requests] == ["handover"]


async def test_given_one_slow_target_when_running_then_other_targets_delivered_meanwhile(
    engine: Engine, account_id: int
) -> None:
    clock = Clock()
    worker = HookDeliveryWorker(
        engine,
        box=BOX,
        clock=clock,
        poll_seconds=0.05,
        per_target=1,
        timeout=5,
        allow_private_targets=True,
    )
    release = threading.Event()
    stop = asyncio.Event()
    slow = Receiver(*[Answer(200, hold=release) for _ in range(3)])
    with slow.running(), Receiver().running() as fast:
        subscribe(engine, account_id, "*", slow.url(), NOW, box=BOX, allow_private=True)
        subscribe(engine, account_id, "*", fast.url(), NOW, box=BOX, allow_private=True)
        for _ in range(3):
            emit(engine, account_id)
        task = asyncio.create_task(worker.run(stop))
        try:
            started = time.monotonic()
            while len(fast.requests) < 3 and time.monotonic() - started < 5:
                await asyncio.sleep(0.02)
            # All of the fast target's events arrived while the slow one held its first.
            assert len(fast.requests) == 3
            assert len(slow.requests) == 1  # per_target=1: one at a time
        finally:
            release.set()
            while len(slow.requests) < 3 and time.monotonic() - started < 10:
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.wait_for(task, 10)

    assert [d.state for d in deliveries(engine)] == ["delivered"] * 6


def test_given_target_that_never_answers_when_timeout_passes_then_retry_is_scheduled(
    engine: Engine, account_id: int
) -> None:
    clock = Clock()
    release = threading.Event()
    with Receiver(Answer(200, hold=release)).running() as silent:
        subscribe(engine, account_id, "*", silent.url(), NOW, box=BOX, allow_private=True)
        emit(engine, account_id)
        client = httpx.Client(timeout=0.3)
        worker = HookDeliveryWorker(engine, client, box=BOX, clock=clock)
        try:
            started = time.monotonic()
            worker.run_once()
            took = time.monotonic() - started
        finally:
            release.set()
            worker.close()
            client.close()

    assert took < 3
    [row] = deliveries(engine)
    assert (row.state, row.attempts, row.last_error) == ("pending", 1, "timed out (ReadTimeout)")
    assert clock.now < row.next_attempt_at <= clock.now + timedelta(seconds=30)
