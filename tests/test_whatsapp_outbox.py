"""The WhatsApp outbox worker against the sandbox (and scripted Graph answers for errors):
the happy path, every error action, leases, concurrency and the run loop.

Rows are inserted straight into ``messages`` / ``wa_outbox`` on the ``engine`` fixture, so
every test runs on SQLite and PostgreSQL. Time is a fake clock and sleeping advances it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from conftest import PHONE_NUMBER_ID
from sqlalchemy import Engine, select
from whatsapp_support import (
    ALICE,
    BOB,
    TOKEN,
    Clock,
    Graph,
    add_contact,
    add_outbound,
    graph_error,
    make_sandbox,
    make_worker,
    message_row,
    outbox_row,
    over_asgi,
)

from wacrm.config import Settings
from wacrm.rules.loader import load_ruleset
from wacrm.rules.runtime import RuleRuntime
from wacrm.sandbox.whatsapp import SandboxConfig, WhatsAppSandbox
from wacrm.store.schema import contacts, rule_firings, tasks, wa_outbox
from wacrm.store.whatsapp_outbox import enqueue_send
from wacrm.whatsapp.meta_bodies import template_message, text_message
from wacrm.whatsapp.meta_send import CloudApiClient
from wacrm.workers.whatsapp_outbox import OutboxPolicy, WhatsAppOutboxWorker


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def alice(engine: Engine, account_id: int, clock: Clock) -> int:
    """A contact who wrote an hour ago: the 24 h window is open."""
    return add_contact(engine, account_id, ALICE, clock.now - timedelta(hours=1))


# --- the happy path ------------------------------------------------------------------------


def test_given_due_row_when_processed_then_wamid_recorded_status_left_to_webhooks(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    sandbox = make_sandbox(clock)
    message_id, outbox_id = add_outbound(
        engine,
        account_id,
        text_message(ALICE, "Your order shipped"),
        at=clock.now,
        contact_id=alice,
    )
    worker = make_worker(engine, clock, over_asgi(sandbox))

    handled = worker.process_due()

    assert handled == 1
    (sent,) = sandbox.sent
    assert sent.body["text"]["body"] == "Your order shipped"
    assert sent.body["biz_opaque_callback_data"] == str(outbox_id)
    message = message_row(engine, message_id)
    assert message.provider_message_id == sent.wamid
    assert message.status == "queued"  # 200 means accepted; webhooks move it on
    assert message.sent_at == clock.now
    row = outbox_row(engine, outbox_id)
    assert (row.state, row.attempts, row.last_error) == ("sent", 1, None)
    with engine.connect() as conn:
        last_out = conn.execute(
            select(contacts.c.last_outbound_at).where(contacts.c.id == alice)
        ).scalar()
    assert last_out == clock.now
    assert worker.process_due() == 0  # nothing is sent twice


async def test_given_sent_row_when_sandbox_posts_statuses_then_they_carry_the_outbox_id(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    received: list[dict[str, Any]] = []

    def receive(request: httpx.Request) -> httpx.Response:
        received.append(json.loads(request.content))
        return httpx.Response(200)

    sandbox = WhatsAppSandbox(
        SandboxConfig(
            access_token=TOKEN,
            app_secret="secret",
            webhook_url="http://wacrm.test/webhooks/whatsapp",
            phone_numbers={PHONE_NUMBER_ID: "15550783881"},
        ),
        clock=lambda: clock.now.timestamp(),
        webhook_http=httpx.AsyncClient(transport=httpx.MockTransport(receive)),
    )
    message_id, outbox_id = add_outbound(
        engine, account_id, text_message(ALICE, "Hi"), at=clock.now, contact_id=alice
    )
    await asyncio.to_thread(make_worker(engine, clock, over_asgi(sandbox)).process_due)

    await sandbox.drain()

    statuses = [b["entry"][0]["changes"][0]["value"]["statuses"][0] for b in received]
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]
    assert {s["biz_opaque_callback_data"] for s in statuses} == {str(outbox_id)}
    assert {s["id"] for s in statuses} == {message_row(engine, message_id).provider_message_id}


def test_given_row_not_yet_due_when_processed_then_left_alone(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    graph = Graph()
    _, outbox_id = add_outbound(
        engine, account_id, text_message(ALICE, "Later"), at=clock.now + timedelta(minutes=5)
    )

    handled = make_worker(engine, clock, graph.client()).process_due()

    assert handled == 0
    assert graph.bodies == []
    assert outbox_row(engine, outbox_id).state == "pending"


def test_given_enqueue_send_when_processed_then_message_and_outbox_rows_work_together(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    graph = Graph()
    with engine.begin() as conn:
        message_id, outbox_id = enqueue_send(
            conn,
            account_id=account_id,
            phone_number_id=PHONE_NUMBER_ID,
            body=text_message(ALICE, "Queued"),
            contact_id=alice,
            rule="test",
            now=clock.now,
        )

    make_worker(engine, clock, graph.client()).process_due()

    message = message_row(engine, message_id)
    assert (message.direction, message.type, message.text, message.rule) == (
        "out",
        "text",
        "Queued",
        "test",
    )
    assert message.provider_message_id == "wamid.SCRIPTED1"
    assert outbox_row(engine, outbox_id).state == "sent"


def test_given_lease_expired_sending_row_when_processed_then_reclaimed(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    graph = Graph()
    _, outbox_id = add_outbound(
        engine, account_id, text_message(ALICE, "Crashed mid-send"), at=clock.now, state="sending"
    )

    make_worker(engine, clock, graph.client()).process_due()

    assert outbox_row(engine, outbox_id).state == "sent"


# --- errors, by the table ------------------------------------------------------------------


def test_given_invalid_request_when_sandbox_refuses_then_failed_without_retry(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    sandbox = make_sandbox(clock)
    # Passes the local content policy (it checks content, not envelopes); Meta refuses it.
    body = {**text_message(ALICE, "x"), "recipient_type": "group"}
    message_id, outbox_id = add_outbound(engine, account_id, body, at=clock.now, contact_id=alice)
    worker = make_worker(engine, clock, over_asgi(sandbox))

    worker.process_due()
    clock.advance(3600)
    worker.process_due()

    message = message_row(engine, message_id)
    assert (message.status, message.error_code) == ("failed", "131009")
    assert message.error_title == "Parameter value is not valid"
    row = outbox_row(engine, outbox_id)
    assert (row.state, row.attempts) == ("failed", 1)
    assert "individual" in row.last_error
    assert len(sandbox.refused) == 1


def test_given_text_over_4096_when_processed_then_content_policy_fails_it_unsent(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    sandbox = make_sandbox(clock)
    body = {**text_message(ALICE, "x"), "text": {"body": "x" * 5000}}
    message_id, outbox_id = add_outbound(engine, account_id, body, at=clock.now, contact_id=alice)
    worker = make_worker(engine, clock, over_asgi(sandbox))

    worker.process_due()
    clock.advance(3600)
    again = worker.process_due()

    message = message_row(engine, message_id)
    assert (message.status, message.error_code) == ("failed", "content_policy")
    row = outbox_row(engine, outbox_id)
    assert (row.state, row.attempts) == ("failed", 1)
    assert "text-too-long" in row.last_error and "4096" in row.last_error
    assert again == 0  # never retried
    assert sandbox.sent == [] and sandbox.refused == []  # never sent


def test_given_transient_error_then_success_when_processed_then_backoff_then_sent(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    graph = Graph(httpx.Response(502, text="Bad Gateway"))
    message_id, outbox_id = add_outbound(
        engine, account_id, text_message(ALICE, "Retry me"), at=clock.now, contact_id=alice
    )
    worker = make_worker(engine, clock, graph.client(), backoff_base=2.0)

    worker.process_due()
    row = outbox_row(engine, outbox_id)
    clock.advance(0.5)
    early = worker.process_due()
    clock.advance(0.5)
    worker.process_due()

    assert (row.state, row.attempts) == ("pending", 1)
    assert row.next_attempt_at == datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC)  # 2 s, jitter 0
    assert "HTTP 502" in row.last_error
    assert early == 0
    assert outbox_row(engine, outbox_id).state == "sent"
    assert message_row(engine, message_id).provider_message_id == "wamid.SCRIPTED2"


def test_given_network_failure_when_processed_then_retried_later(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    graph = Graph(httpx.ConnectError("refused"))
    _, outbox_id = add_outbound(
        engine, account_id, text_message(ALICE, "Hi"), at=clock.now, contact_id=alice
    )

    make_worker(engine, clock, graph.client()).process_due()

    row = outbox_row(engine, outbox_id)
    assert (row.state, row.attempts) == ("pending", 1)
    assert "No answer" in row.last_error


def test_given_errors_forever_when_processed_then_failed_after_max_attempts(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    graph = Graph(*[graph_error(131000, status=500) for _ in range(10)])
    message_id, outbox_id = add_outbound(
        engine, account_id, text_message(ALICE, "Doomed"), at=clock.now, contact_id=alice
    )
    worker = make_worker(engine, clock, graph.client(), max_attempts=4)

    for _ in range(10):
        worker.process_due()
        clock.advance(3600)

    assert len(graph.bodies) == 4
    row = outbox_row(engine, outbox_id)
    assert (row.state, row.attempts) == ("failed", 4)
    assert row.last_error.startswith("gave up after 4 attempts")
    assert message_row(engine, message_id).error_code == "131000"


def test_given_backoff_when_message_too_old_then_failed_by_age(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    graph = Graph(graph_error(1))
    _, outbox_id = add_outbound(
        engine,
        account_id,
        text_message(ALICE, "Stale"),
        at=clock.now - timedelta(hours=25),
        contact_id=alice,
    )

    make_worker(engine, clock, graph.client()).process_due()

    row = outbox_row(engine, outbox_id)
    assert row.state == "failed"
    assert "older than" in row.last_error


def test_given_unknown_error_code_when_processed_then_retried_with_backoff(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    graph = Graph(graph_error(999_999))
    _, outbox_id = add_outbound(
        engine, account_id, text_message(ALICE, "Hm"), at=clock.now, contact_id=alice
    )

    make_worker(engine, clock, graph.client()).process_due()

    row = outbox_row(engine, outbox_id)
    assert (row.state, row.attempts) == ("pending", 1)
    assert row.next_attempt_at > clock.now


def test_given_retry_after_when_throttled_then_whole_number_paused_that_long(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    bob = add_contact(engine, account_id, BOB, clock.now)
    throttled = graph_error(130429)
    throttled.headers["Retry-After"] = "30"
    graph = Graph(throttled)
    _, first = add_outbound(
        engine, account_id, text_message(ALICE, "1"), at=clock.now, contact_id=alice
    )
    _, second = add_outbound(
        engine, account_id, text_message(BOB, "2"), at=clock.now, contact_id=bob
    )
    worker = make_worker(engine, clock, graph.client())

    worker.process_due()
    clock.advance(29)
    during_pause = worker.process_due()
    clock.advance(1)
    worker.process_due()

    assert during_pause == 0
    assert len(graph.bodies) == 3  # the throttled one, then both after 30 s
    assert outbox_row(engine, first).state == outbox_row(engine, second).state == "sent"


def test_given_pair_rate_error_when_processed_then_only_that_recipient_delayed_in_order(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    bob = add_contact(engine, account_id, BOB, clock.now)
    graph = Graph(graph_error(131056))
    _, a1 = add_outbound(
        engine, account_id, text_message(ALICE, "a1"), at=clock.now, contact_id=alice
    )
    _, b1 = add_outbound(engine, account_id, text_message(BOB, "b1"), at=clock.now, contact_id=bob)
    _, a2 = add_outbound(
        engine, account_id, text_message(ALICE, "a2"), at=clock.now, contact_id=alice
    )
    worker = make_worker(engine, clock, graph.client(), mps=None)

    worker.process_due()
    first_pass = [b["text"]["body"] for b in graph.bodies]
    a1_row, a2_row = outbox_row(engine, a1), outbox_row(engine, a2)
    clock.advance(4)  # 4^1 s
    worker.process_due()
    after_delay = [b["text"]["body"] for b in graph.bodies]
    clock.advance(6)  # after a pair-rate hit, no bursting: one per 6 s
    worker.process_due()

    assert first_pass == ["a1", "b1"]  # a2 waits behind a1
    assert outbox_row(engine, b1).state == "sent"
    assert (a1_row.state, a1_row.next_attempt_at) == ("pending", clock.now - timedelta(seconds=6))
    assert a2_row.state == "pending"
    assert after_delay == ["a1", "b1", "a1"]
    assert [b["text"]["body"] for b in graph.bodies] == ["a1", "b1", "a1", "a2"]
    assert outbox_row(engine, a1).state == outbox_row(engine, a2).state == "sent"


def test_given_repeated_pair_rate_errors_when_processed_then_delay_grows_4_to_the_x(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    graph = Graph(graph_error(131056), graph_error(131056))
    _, outbox_id = add_outbound(
        engine, account_id, text_message(ALICE, "a"), at=clock.now, contact_id=alice
    )
    worker = make_worker(engine, clock, graph.client(), max_attempts=2)

    worker.process_due()
    clock.advance(4)
    worker.process_due()
    second_delay = outbox_row(engine, outbox_id).next_attempt_at - clock.now
    clock.advance(16)
    worker.process_due()

    assert second_delay == timedelta(seconds=16)
    assert outbox_row(engine, outbox_id).state == "sent"  # pair delays don't use up attempts


def test_given_token_rejected_when_processed_then_sending_pauses_without_spending_attempts(
    engine: Engine, account_id: int, alice: int, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox = make_sandbox(clock)
    _, outbox_id = add_outbound(
        engine, account_id, text_message(ALICE, "Hi"), at=clock.now, contact_id=alice
    )
    bad_token = "EAAG-wrong-token-secret"
    worker = make_worker(engine, clock, over_asgi(sandbox), token=bad_token)

    with caplog.at_level(logging.DEBUG):
        worker.process_due()
        clock.advance(60)
        paused = worker.process_due()

    row = outbox_row(engine, outbox_id)
    assert paused == 0
    assert (row.state, row.attempts) == ("pending", 0)
    assert row.next_attempt_at == clock.now + timedelta(minutes=4)
    assert len(sandbox.refused) == 1
    assert "WACRM_WHATSAPP_ACCESS_TOKEN" in caplog.text
    assert bad_token not in caplog.text and TOKEN not in caplog.text


@pytest.mark.parametrize("code", [368, 131031, 131048])
def test_given_account_restricted_when_processed_then_number_halted_and_alerted(
    engine: Engine,
    account_id: int,
    alice: int,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
    code: int,
) -> None:
    graph = Graph(graph_error(code))
    _, first = add_outbound(
        engine, account_id, text_message(ALICE, "1"), at=clock.now, contact_id=alice
    )
    worker = make_worker(engine, clock, graph.client())

    with caplog.at_level(logging.CRITICAL):
        worker.process_due()
    _, second = add_outbound(engine, account_id, text_message(ALICE, "2"), at=clock.now)
    clock.advance(3600)
    while_halted = worker.process_due()
    worker.resume(PHONE_NUMBER_ID)
    worker.process_due()

    assert f"halted: (#{code})" in caplog.text and "ALERT" in caplog.text
    assert while_halted == 0
    assert len(graph.bodies) == 3
    assert outbox_row(engine, first).state == outbox_row(engine, second).state == "sent"


@pytest.mark.parametrize(
    ("code", "tag"), [(131026, "wa-undeliverable"), (131050, "wa-marketing-opt-out")]
)
def test_given_recipient_cannot_receive_when_processed_then_failed_and_contact_flagged(
    engine: Engine, account_id: int, alice: int, clock: Clock, code: int, tag: str
) -> None:
    graph = Graph(graph_error(code))
    message_id, outbox_id = add_outbound(
        engine, account_id, text_message(ALICE, "x"), at=clock.now, contact_id=alice
    )
    worker = make_worker(engine, clock, graph.client())

    worker.process_due()
    clock.advance(86400)
    worker.process_due()

    assert len(graph.bodies) == 1
    assert outbox_row(engine, outbox_id).state == "failed"
    assert message_row(engine, message_id).error_code == str(code)
    with engine.connect() as conn:
        tags = conn.execute(select(contacts.c.tags).where(contacts.c.id == alice)).scalar()
    assert tags is not None
    assert tag in orjson.loads(tags)


def test_given_send_failing_for_good_when_rules_given_then_failure_rule_fires_in_that_commit(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    graph = Graph(graph_error(131026))
    message_id, outbox_id = add_outbound(
        engine, account_id, text_message(ALICE, "x"), at=clock.now, contact_id=alice
    )
    rules = RuleRuntime(load_ruleset(), values={"price_list": "-"})
    worker = make_worker(engine, clock, graph.client(), rules=rules)

    worker.process_due()
    clock.advance(86400)
    worker.process_due()

    assert outbox_row(engine, outbox_id).state == "failed"
    with engine.connect() as conn:
        tags = conn.execute(select(contacts.c.tags).where(contacts.c.id == alice)).scalar()
        subjects = list(conn.execute(select(tasks.c.subject)).scalars())
        fired = list(conn.execute(select(rule_firings.c.firing_key)).scalars())
    assert tags is not None
    assert {"wa-undeliverable", "delivery-failed"} <= set(orjson.loads(tags))
    assert len(subjects) == 1 and subjects[0].endswith("(131026)")
    # Keyed by the message row: a failed status webhook for it later is the same failure.
    assert fired == [f"failed:{message_id}"]


def test_given_rule_broken_when_send_fails_for_good_then_failure_still_recorded(
    engine: Engine, account_id: int, alice: int, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = Graph(graph_error(131026))
    _, outbox_id = add_outbound(
        engine, account_id, text_message(ALICE, "x"), at=clock.now, contact_id=alice
    )
    rules = RuleRuntime(load_ruleset(), values={"price_list": "-"})

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise ValueError("a rule that cannot run")

    monkeypatch.setattr(rules, "on_send_failed", broken)
    worker = make_worker(engine, clock, graph.client(), rules=rules)

    worker.process_due()
    clock.advance(86400)
    worker.process_due()

    # Not leased again and resent: the failure is recorded, the rule's effects are not.
    assert len(graph.bodies) == 1
    assert outbox_row(engine, outbox_id).state == "failed"
    with engine.connect() as conn:
        assert list(conn.execute(select(tasks.c.id)).scalars()) == []


def test_given_template_paused_when_processed_then_later_sends_of_it_fail_locally(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    graph = Graph(graph_error(132015))
    promo = template_message(ALICE, "promo", "en")
    _, first = add_outbound(engine, account_id, promo, at=clock.now)
    _, second = add_outbound(engine, account_id, promo, at=clock.now)
    _, other = add_outbound(
        engine, account_id, template_message(ALICE, "receipt", "en"), at=clock.now
    )
    worker = make_worker(engine, clock, graph.client())

    worker.process_due()

    assert [b["template"]["name"] for b in graph.bodies] == ["promo", "receipt"]
    assert outbox_row(engine, first).state == outbox_row(engine, second).state == "failed"
    assert "stopped" in outbox_row(engine, second).last_error
    assert outbox_row(engine, other).state == "sent"


def test_given_per_user_marketing_limit_when_processed_then_retried_after_24h(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    graph = Graph(graph_error(131049))
    _, outbox_id = add_outbound(
        engine, account_id, template_message(ALICE, "promo", "en"), at=clock.now
    )

    make_worker(engine, clock, graph.client()).process_due()

    row = outbox_row(engine, outbox_id)
    assert (row.state, row.next_attempt_at) == ("pending", clock.now + timedelta(hours=24))


def test_given_template_param_mismatch_when_processed_then_failed_to_fix(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    graph = Graph(graph_error(132000))
    message_id, outbox_id = add_outbound(
        engine, account_id, template_message(ALICE, "promo", "en"), at=clock.now
    )

    make_worker(engine, clock, graph.client()).process_due()

    assert outbox_row(engine, outbox_id).state == "failed"
    assert message_row(engine, message_id).error_title == "Template param count mismatch"


def test_given_stored_request_not_json_when_processed_then_failed_not_stuck(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    graph = Graph()
    message_id, outbox_id = add_outbound(
        engine, account_id, text_message(ALICE, "x"), at=clock.now, contact_id=alice
    )
    with engine.begin() as conn:
        conn.execute(wa_outbox.update().values(request="{not json"))

    make_worker(engine, clock, graph.client()).process_due()

    assert outbox_row(engine, outbox_id).state == "failed"
    assert message_row(engine, message_id).error_code == "local"
    assert graph.bodies == []


# --- concurrency and the loop --------------------------------------------------------------


def test_given_two_workers_when_running_at_once_then_each_row_sent_exactly_once(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    graph = Graph()
    for i in range(30):
        phone = f"+1650777{i:04d}"
        contact = add_contact(engine, account_id, phone, clock.now)
        add_outbound(
            engine, account_id, text_message(phone, f"m{i}"), at=clock.now, contact_id=contact
        )
    workers = [make_worker(engine, clock, graph.client(), batch_size=5) for _ in range(2)]

    def drain(worker: WhatsAppOutboxWorker) -> None:
        while worker.process_due():
            pass

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    bodies = sorted(b["text"]["body"] for b in graph.bodies)
    assert bodies == sorted(f"m{i}" for i in range(30))


async def test_given_running_worker_when_woken_then_new_row_sent_and_stop_ends_it(
    engine: Engine, account_id: int
) -> None:
    graph = Graph()
    alice = add_contact(engine, account_id, ALICE, datetime.now(UTC))
    worker = WhatsAppOutboxWorker(
        engine,
        Settings(),
        CloudApiClient(
            base_url="http://sandbox.test", version="v25.0", access_token=TOKEN, http=graph.client()
        ),
        policy=OutboxPolicy(poll_interval=30.0),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(0.05)
    add_outbound(
        engine, account_id, text_message(ALICE, "wake"), at=datetime.now(UTC), contact_id=alice
    )

    worker.wake()
    for _ in range(200):
        if graph.bodies:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, timeout=5)

    assert [b["text"]["body"] for b in graph.bodies] == ["wake"]


def test_given_settings_when_worker_from_settings_then_client_targets_graph_url(
    engine: Engine,
) -> None:
    settings = Settings(whatsapp_api_base_url="http://127.0.0.1:9", whatsapp_api_version="v25.0")

    worker = WhatsAppOutboxWorker.from_settings(engine, settings)

    assert worker.name == "whatsapp-outbox"
    meta = worker._senders.meta
    assert meta is not None and meta.messages_url("1") == "http://127.0.0.1:9/v25.0/1/messages"
    assert worker._senders.twilio is None  # Twilio not configured
    worker.close()
    worker.close()  # idempotent
