"""A free-form send refused *after* it was accepted because the 24 h window had closed: the
failed status (Meta 131047, Twilio 63016) queues the send's template fallback as a message
of its own, exactly once, in the status's transaction, and the outbox sends it.

Every test runs on SQLite and PostgreSQL (the ``engine`` fixture); time is a fake clock and
the providers are the sandboxes or a scripted Graph API behind httpx MockTransports.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from conftest import PHONE_NUMBER_ID
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError
from test_inbox_processor import envelope, status
from test_twilio_outbox import ACCOUNT_SID, AUTH_TOKEN, HELLO_SID, TWILIO_NUMBER, twilio_settings
from test_twilio_outbox import make_worker as twilio_worker
from whatsapp_support import (
    ALICE,
    TOKEN,
    Clock,
    Graph,
    add_contact,
    make_worker,
    message_row,
    outbox_row,
    over_asgi,
)

from wacrm.config import Settings
from wacrm.rules.loader import load_ruleset
from wacrm.rules.runtime import RuleRuntime
from wacrm.sandbox.twilio import TwilioSandbox
from wacrm.sandbox.whatsapp import SandboxConfig, WhatsAppSandbox
from wacrm.store.accounts import register_number
from wacrm.store.inbox import InboxRow, insert_inbox_rows
from wacrm.store.schema import inbox, messages, rule_firings, tasks, wa_outbox
from wacrm.store.whatsapp_outbox import enqueue_send
from wacrm.whatsapp.meta_bodies import body_parameters, template_message, text_message
from wacrm.whatsapp.meta_webhook import split_envelope
from wacrm.whatsapp.twilio_webhook import event_id, inbox_payload
from wacrm.workers import inbox as inbox_module
from wacrm.workers.inbox import InboxProcessor
from wacrm.workers.late_fallback import queue_late_fallback
from wacrm.workers.whatsapp_outbox import WhatsAppOutboxWorker

FALLBACK = template_message(ALICE, "order_update", "en_US", body_parameters("Ana"))
RE_ENGAGEMENT = (131047, "Re-engagement message")
RULE = "order-shipped"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def alice(engine: Engine, account_id: int, clock: Clock) -> int:
    """A contact who wrote an hour ago by our records: the worker sends free-form."""
    return add_contact(engine, account_id, ALICE, clock.now - timedelta(hours=1))


# -- helpers ---------------------------------------------------------------------------------


def processor_for(engine: Engine, clock: Clock, worker: WhatsAppOutboxWorker) -> InboxProcessor:
    rules = RuleRuntime(load_ruleset())  # the shipped rules: delivery-failed on message_failed
    return InboxProcessor(engine, Settings(), rules=rules, clock=clock, handover=worker)


def queue_free_form(
    engine: Engine,
    account_id: int,
    clock: Clock,
    *,
    contact_id: int,
    fallback: dict[str, Any] | None = FALLBACK,
    number: str = PHONE_NUMBER_ID,
) -> tuple[int, int]:
    with engine.begin() as conn:
        return enqueue_send(
            conn,
            account_id=account_id,
            phone_number_id=number,
            body=text_message(ALICE, "Your order shipped"),
            contact_id=contact_id,
            rule=RULE,
            fallback=fallback,
            now=clock.now,
        )


def store_meta(engine: Engine, account_id: int, doc: dict[str, Any], clock: Clock) -> None:
    """What the webhook route stores: one inbox row per event, duplicates ignored."""
    rows = [
        InboxRow(
            account_id, "meta", e.kind, e.event_id or "", orjson.dumps(e.payload).decode(), clock()
        )
        for e in split_envelope(doc)
    ]
    with engine.begin() as conn:
        insert_inbox_rows(conn, rows)


def meta_failed(wamid: str, code: int, title: str, clock: Clock) -> dict[str, Any]:
    error = {"code": code, "title": title, "message": title, "error_data": {"details": title}}
    ts = int(clock.now.timestamp())
    return envelope(statuses=[status(wamid, "failed", ts, errors=[error])])


def outbound(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(messages).where(messages.c.direction == "out").order_by(messages.c.id)
            ).all()
        )


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def sent_by_graph(
    engine: Engine, account_id: int, clock: Clock, contact_id: int, **kwargs: Any
) -> tuple[WhatsAppOutboxWorker, Graph, int, str]:
    """A free-form message the scripted Graph API accepted: (worker, graph, id, wamid)."""
    graph = Graph()
    worker = make_worker(engine, clock, graph.client(), mps=None, pair_limit=False)
    message_id, _ = queue_free_form(engine, account_id, clock, contact_id=contact_id, **kwargs)
    assert worker.process_due() == 1
    wamid = message_row(engine, message_id).provider_message_id
    assert wamid is not None
    return worker, graph, message_id, wamid


def assert_one_template_queued(engine: Engine, failed_id: int, alice: int) -> Any:
    """The failed message kept as it was, and one template message after it; returns it."""
    failed, template = outbound(engine)
    assert (failed.id, failed.type, failed.status) == (failed_id, "text", "failed")
    assert (failed.error_code, failed.text) == (str(RE_ENGAGEMENT[0]), "Your order shipped")
    assert (template.type, template.text) == ("template", "[template order_update/en_US]")
    assert (template.contact_id, template.rule, orjson.loads(template.payload)) == (
        alice,
        RULE,
        FALLBACK,
    )
    old, new = (outbox_row(engine, r.id) for r in _outbox_rows(engine))
    assert (old.state, old.fallback_request) == ("sent", None)
    assert (new.message_id, new.fallback_request) == (template.id, None)
    assert orjson.loads(new.request) == FALLBACK
    return template


def _outbox_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        query = select(wa_outbox.c.id, wa_outbox.c.message_id).order_by(wa_outbox.c.id)
        return list(conn.execute(query).all())


# -- Meta -------------------------------------------------------------------------------------


@pytest.fixture
def webhooks() -> Iterator[tuple[httpx.AsyncClient, list[dict[str, Any]]]]:
    """What the sandbox posts to the CRM's webhook, captured instead of served."""
    posted: list[dict[str, Any]] = []

    def receive(request: httpx.Request) -> httpx.Response:
        posted.append(json.loads(request.content))
        return httpx.Response(200)

    client = httpx.AsyncClient(transport=httpx.MockTransport(receive))
    yield client, posted
    asyncio.run(client.aclose())


def test_given_meta_accepts_then_fails_131047_when_status_processed_then_template_queued_and_sent(
    engine: Engine,
    account_id: int,
    alice: int,
    clock: Clock,
    webhooks: tuple[httpx.AsyncClient, list[dict[str, Any]]],
) -> None:
    hooks, posted = webhooks
    config = SandboxConfig(
        access_token=TOKEN,
        app_secret="secret",
        phone_numbers={PHONE_NUMBER_ID: "15550783881"},
        webhook_url="http://crm.test/webhooks/whatsapp",
        enforce_window=True,
    )
    # Alice never wrote to the sandbox: Meta's window is closed, though ours looks open.
    sandbox = WhatsAppSandbox(config, clock=lambda: clock.now.timestamp(), webhook_http=hooks)
    worker = make_worker(engine, clock, over_asgi(sandbox), mps=None, pair_limit=False)
    processor = processor_for(engine, clock, worker)
    message_id, _ = queue_free_form(engine, account_id, clock, contact_id=alice)
    assert worker.process_due() == 1
    assert asyncio.run(sandbox.drain()) == 1
    [doc] = posted
    assert doc["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] == "failed"

    store_meta(engine, account_id, doc, clock)
    store_meta(engine, account_id, doc, clock)  # delivered twice
    assert processor.process_pending() == 1

    template = assert_one_template_queued(engine, message_id, alice)
    # The rules saw the original failure, exactly as before.
    [task] = _rows(engine, tasks)
    assert task.subject.endswith("failed: Re-engagement message (131047)")
    assert count(engine, rule_firings, rule_firings.c.rule == "delivery-failed") == 1
    # Claimed for the sender in the status's transaction, and sent by it.
    assert worker.process_due() == 1
    text, sent = sandbox.sent
    assert (text.type, sent.type) == ("text", "template")
    assert sent.body["template"]["name"] == "order_update"
    after = message_row(engine, template.id)
    assert after.provider_message_id == sent.wamid
    assert message_row(engine, message_id).status == "failed"


def test_given_131047_failure_delivered_again_later_when_processed_then_still_one_template(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    worker, _, message_id, wamid = sent_by_graph(engine, account_id, clock, alice)
    processor = processor_for(engine, clock, worker)
    store_meta(engine, account_id, meta_failed(wamid, *RE_ENGAGEMENT, clock), clock)
    assert processor.process_pending() == 1
    clock.advance(60)
    # Meta sends the failure again; its inbox key is new (say the first row was pruned).
    with engine.begin() as conn:
        conn.execute(inbox.update().values(event_id=inbox.c.event_id + ":first"))
    store_meta(engine, account_id, meta_failed(wamid, *RE_ENGAGEMENT, clock), clock)

    assert processor.process_pending() == 1

    assert_one_template_queued(engine, message_id, alice)
    assert count(engine, rule_firings, rule_firings.c.rule == "delivery-failed") == 1


def test_given_crash_after_fallback_queued_when_retried_then_template_queued_exactly_once(
    engine: Engine, account_id: int, alice: int, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, _, message_id, wamid = sent_by_graph(engine, account_id, clock, alice)
    processor = processor_for(engine, clock, worker)
    store_meta(engine, account_id, meta_failed(wamid, *RE_ENGAGEMENT, clock), clock)

    def queue_then_crash(conn: Any, **kwargs: Any) -> Any:
        queue_late_fallback(conn, **kwargs)
        raise OperationalError("INSERT INTO wa_outbox", {}, Exception("connection lost"))

    monkeypatch.setattr(inbox_module, "queue_late_fallback", queue_then_crash)
    with pytest.raises(OperationalError):
        processor.process_pending()

    assert len(outbound(engine)) == 1  # nothing of it committed
    assert message_row(engine, message_id).status == "queued"
    assert _rows(engine, inbox)[0].state == "pending"
    monkeypatch.setattr(inbox_module, "queue_late_fallback", queue_late_fallback)
    assert processor.process_pending() == 1
    assert_one_template_queued(engine, message_id, alice)


def test_given_failed_status_with_other_code_when_processed_then_no_template_and_fallback_kept(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    worker, graph, _, wamid = sent_by_graph(engine, account_id, clock, alice)
    processor = processor_for(engine, clock, worker)
    doc = meta_failed(wamid, 131026, "Message undeliverable", clock)
    store_meta(engine, account_id, doc, clock)

    assert processor.process_pending() == 1

    [failed] = outbound(engine)
    assert (failed.status, failed.error_code) == ("failed", "131026")
    [row] = _outbox_rows(engine)
    assert orjson.loads(outbox_row(engine, row.id).fallback_request) == FALLBACK
    assert worker.process_due() == 0 and len(graph.bodies) == 1


def test_given_131047_failure_of_send_without_fallback_when_processed_then_nothing_queued(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    worker, graph, message_id, wamid = sent_by_graph(
        engine, account_id, clock, alice, fallback=None
    )
    processor = processor_for(engine, clock, worker)
    store_meta(engine, account_id, meta_failed(wamid, *RE_ENGAGEMENT, clock), clock)

    assert processor.process_pending() == 1

    [failed] = outbound(engine)
    assert (failed.id, failed.status, failed.error_code) == (message_id, "failed", "131047")
    assert count(engine, wa_outbox) == 1
    assert count(engine, rule_firings, rule_firings.c.rule == "delivery-failed") == 1
    assert worker.process_due() == 0 and len(graph.bodies) == 1


def test_given_fallback_already_queued_when_queued_again_then_none(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    _, _, message_id, _ = sent_by_graph(engine, account_id, clock, alice)
    args: dict[str, Any] = {
        "account_id": account_id,
        "message_id": message_id,
        "provider": "meta",
        "code": 131047,
        "now": clock.now,
    }
    with engine.begin() as conn:
        first = queue_late_fallback(conn, **args)
        again = queue_late_fallback(conn, **args)

    assert first is not None and again is None
    assert len(outbound(engine)) == 2


# -- Twilio -----------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["failed", "undelivered"])
def test_given_twilio_accepts_then_calls_back_63016_when_processed_then_template_sent(
    engine: Engine, account_id: int, alice: int, clock: Clock, state: str
) -> None:
    register_number(engine, account_id, TWILIO_NUMBER, provider="twilio")
    sandbox = TwilioSandbox(
        ACCOUNT_SID, AUTH_TOKEN, senders=(TWILIO_NUMBER,), content_sids=(HELLO_SID,)
    )
    worker = twilio_worker(engine, clock, sandbox, mps=None, pair_limit=False)
    rules = RuleRuntime(load_ruleset())
    processor = InboxProcessor(engine, twilio_settings(), rules=rules, clock=clock, handover=worker)
    fallback = template_message(ALICE, "hello", "en_US", body_parameters("Ana"))
    message_id, _ = queue_free_form(
        engine, account_id, clock, contact_id=alice, fallback=fallback, number=TWILIO_NUMBER
    )
    assert worker.process_due() == 1
    [text] = sandbox.sent
    [(_, form, _)] = sandbox.status_callbacks(text.sid, statuses=(state,), error_code=63016)
    row = InboxRow(
        account_id,
        "twilio",
        "status",
        event_id(form) or "",
        orjson.dumps(inbox_payload(form, clock.now)).decode(),
        clock.now,
    )
    for _ in range(2):  # delivered twice
        with engine.begin() as conn:
            insert_inbox_rows(conn, [row])

    assert processor.process_pending() == 1

    failed, template = outbound(engine)
    assert (failed.id, failed.status, failed.error_code) == (message_id, "failed", "63016")
    assert (template.type, template.provider, template.rule) == ("template", "twilio", RULE)
    assert worker.process_due() == 1
    _, sent = sandbox.sent
    assert (sent.form["ContentSid"], sent.form["ContentVariables"]) == (HELLO_SID, '{"1":"Ana"}')
    assert message_row(engine, template.id).provider_message_id == sent.sid
    assert outbox_row(engine, _outbox_rows(engine)[0].id).fallback_request is None
    assert count(engine, wa_outbox) == 2


def _rows(engine: Engine, table: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(table).order_by(table.c.id)).all())
