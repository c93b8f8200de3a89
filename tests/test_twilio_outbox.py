"""The WhatsApp outbox sending through Twilio: rows of a number registered as ``twilio`` go to
Twilio's ``Messages.json`` (the Twilio sandbox behind an httpx MockTransport), each Twilio
error code gets its reaction, and the SID Twilio returns is what its signed status callbacks,
posted to the real app, move forward.

Every test runs on SQLite and PostgreSQL (the ``engine`` fixture); time is a fake clock.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from conftest import PHONE_NUMBER_ID
from sqlalchemy import Engine, select
from test_server_webhooks import serving, settings_for_tests
from test_twilio_webhook import signed_form
from whatsapp_support import (
    ALICE,
    BOB,
    TOKEN,
    Clock,
    Graph,
    add_contact,
    message_row,
    outbox_row,
)

from wacrm.config import Secret, Settings
from wacrm.rules.loader import load_ruleset
from wacrm.rules.runtime import RuleRuntime
from wacrm.sandbox.twilio import TwilioSandbox
from wacrm.server import create_app
from wacrm.store.accounts import register_number
from wacrm.store.schema import contacts, messages, wa_outbox
from wacrm.store.whatsapp_outbox import enqueue_send
from wacrm.whatsapp.meta_bodies import (
    ReplyButton,
    body_parameters,
    buttons_message,
    location_message,
    media_message,
    template_message,
    text_message,
)
from wacrm.whatsapp.meta_send import CloudApiClient
from wacrm.whatsapp.twilio_send import TwilioSender
from wacrm.workers.inbox import InboxProcessor
from wacrm.workers.whatsapp_outbox import OutboxPolicy, WhatsAppOutboxWorker
from wacrm.workers.whatsapp_send import send_now

TWILIO_NUMBER = "whatsapp:+14155238886"
ACCOUNT_SID = "AC" + "0" * 30 + "01"
AUTH_TOKEN = "twilio-test-auth-token"  # the webhook tests' token: their signed_form works
HELLO_SID = "HX" + "a" * 32
PUBLIC = "https://hooks.example.com"
CALLBACK = PUBLIC + "/webhooks/twilio"
TWILIO_BASE = "http://twilio.test"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def twilio_account(engine: Engine, account_id: int) -> int:
    """The default account, with its Cloud API number and a Twilio number."""
    register_number(engine, account_id, TWILIO_NUMBER, provider="twilio")
    return account_id


@pytest.fixture
def alice(engine: Engine, twilio_account: int, clock: Clock) -> int:
    """A contact who wrote an hour ago: the 24 h window is open."""
    return add_contact(engine, twilio_account, ALICE, clock.now - timedelta(hours=1))


@pytest.fixture
def sandbox() -> TwilioSandbox:
    return TwilioSandbox(
        ACCOUNT_SID, AUTH_TOKEN, senders=(TWILIO_NUMBER,), content_sids=(HELLO_SID,)
    )


def twilio_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_auth_token": Secret(AUTH_TOKEN),
        "twilio_api_base_url": TWILIO_BASE,
        "twilio_content_sids": f"hello/en_US={HELLO_SID}",
        "public_url": PUBLIC,
        **overrides,
    }
    return settings_for_tests(**values)


def make_worker(
    engine: Engine,
    clock: Clock,
    sandbox: TwilioSandbox | None,
    *,
    graph: Graph | None = None,
    token: str = AUTH_TOKEN,
    **policy: Any,
) -> WhatsAppOutboxWorker:
    twilio = (
        TwilioSender(
            httpx.Client(transport=httpx.MockTransport(sandbox.handler)),
            ACCOUNT_SID,
            Secret(token),
            TWILIO_BASE,
        )
        if sandbox is not None
        else None
    )
    meta = (
        CloudApiClient(
            base_url="http://sandbox.test", version="v25.0", access_token=TOKEN, http=graph.client()
        )
        if graph is not None
        else None
    )
    return WhatsAppOutboxWorker(
        engine,
        twilio_settings(),
        meta,
        twilio=twilio,
        policy=OutboxPolicy(**policy),
        clock=clock,
        sleep=clock.sleep,
        jitter=lambda: 0.0,
    )


def queue(
    engine: Engine,
    account_id: int,
    body: dict[str, Any],
    clock: Clock,
    *,
    contact_id: int | None = None,
    fallback: dict[str, Any] | None = None,
    number: str = TWILIO_NUMBER,
) -> tuple[int, int]:
    with engine.begin() as conn:
        return enqueue_send(
            conn,
            account_id=account_id,
            phone_number_id=number,
            body=body,
            contact_id=contact_id,
            fallback=fallback,
            now=clock.now,
        )


def contact_tags(engine: Engine, contact_id: int) -> list[str]:
    with engine.connect() as conn:
        raw = conn.execute(select(contacts.c.tags).where(contacts.c.id == contact_id)).scalar()
    return list(orjson.loads(raw or "[]"))


# --- dispatch ------------------------------------------------------------------------------


def test_given_twilio_number_row_when_processed_then_sent_via_messages_json_sid_recorded(
    engine: Engine, twilio_account: int, alice: int, clock: Clock, sandbox: TwilioSandbox
) -> None:
    message_id, outbox_id = queue(
        engine, twilio_account, text_message(ALICE, "Your order shipped"), clock, contact_id=alice
    )
    worker = make_worker(engine, clock, sandbox)

    assert worker.process_due() == 1

    [sent] = sandbox.sent
    assert sent.form == {
        "From": TWILIO_NUMBER,
        "To": "whatsapp:" + ALICE,
        "Body": "Your order shipped",
        "StatusCallback": CALLBACK,
    }
    message = message_row(engine, message_id)
    assert (message.provider, message.provider_message_id) == ("twilio", sent.sid)
    assert message.status == "queued"  # 201 means accepted; status callbacks move it on
    assert outbox_row(engine, outbox_id).state == "sent"
    assert worker.process_due() == 0  # nothing is sent twice


def test_given_rows_of_both_providers_when_processed_then_each_goes_through_its_own(
    engine: Engine, twilio_account: int, alice: int, clock: Clock, sandbox: TwilioSandbox
) -> None:
    graph = Graph()
    meta_id, _ = queue(
        engine, twilio_account, text_message(ALICE, "via Meta"), clock, number=PHONE_NUMBER_ID
    )
    twilio_id, _ = queue(engine, twilio_account, text_message(BOB, "via Twilio"), clock)
    worker = make_worker(engine, clock, sandbox, graph=graph, enforce_window=False)

    worker.process_due()

    assert [b["text"]["body"] for b in graph.bodies] == ["via Meta"]
    assert [m.form["Body"] for m in sandbox.sent] == ["via Twilio"]
    assert message_row(engine, meta_id).provider_message_id == "wamid.SCRIPTED1"
    assert message_row(engine, meta_id).provider == "meta"
    assert message_row(engine, twilio_id).provider_message_id == sandbox.sent[0].sid


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (media_message(ALICE, "image", link="https://cdn.test/a.jpg", caption="Your invoice"),
         {"MediaUrl": "https://cdn.test/a.jpg", "Body": "Your invoice"}),
        (media_message(ALICE, "document", link="https://cdn.test/i.pdf", filename="i.pdf"),
         {"MediaUrl": "https://cdn.test/i.pdf"}),
        (media_message(ALICE, "video", link="https://cdn.test/v.mp4"),
         {"MediaUrl": "https://cdn.test/v.mp4"}),
        (media_message(ALICE, "audio", link="https://cdn.test/a.ogg"),
         {"MediaUrl": "https://cdn.test/a.ogg"}),
        (template_message(ALICE, "hello", "en_US", body_parameters("Ana", "42")),
         {"ContentSid": HELLO_SID, "ContentVariables": '{"1":"Ana","2":"42"}'}),
        (template_message(ALICE, "hello", "en_US"), {"ContentSid": HELLO_SID}),
    ],
    ids=["image", "document", "video", "audio", "template", "template-no-params"],
)  # fmt: skip
def test_given_each_body_type_when_sent_via_twilio_then_translated_to_its_form(
    engine: Engine,
    twilio_account: int,
    alice: int,
    clock: Clock,
    sandbox: TwilioSandbox,
    body: dict[str, Any],
    expected: dict[str, str],
) -> None:
    queue(engine, twilio_account, body, clock, contact_id=alice)

    make_worker(engine, clock, sandbox).process_due()

    [sent] = sandbox.sent
    common = {"From": TWILIO_NUMBER, "To": "whatsapp:" + ALICE, "StatusCallback": CALLBACK}
    assert sent.form == {**common, **expected}


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (location_message(ALICE, 37.77, -122.41, name="City Hall"), "twilio_unsupported",
         "location"),
        (buttons_message(ALICE, "Pick one", [ReplyButton("a", "A")]), "twilio_unsupported",
         "interactive"),
        (media_message(ALICE, "image", media_id="1234567890"), "twilio_unsupported", "MediaUrl"),
        (template_message(ALICE, "order_update", "pt_BR"), "twilio_no_content_sid",
         "WACRM_TWILIO_CONTENT_SIDS"),
    ],
    ids=["location", "interactive", "media-id", "template-unmapped"],
)  # fmt: skip
def test_given_body_twilio_cannot_take_when_processed_then_failed_for_good_with_reason(
    engine: Engine,
    twilio_account: int,
    alice: int,
    clock: Clock,
    sandbox: TwilioSandbox,
    body: dict[str, Any],
    code: str,
    words: str,
) -> None:
    message_id, outbox_id = queue(engine, twilio_account, body, clock, contact_id=alice)
    worker = make_worker(engine, clock, sandbox)

    worker.process_due()
    clock.advance(3600)

    assert worker.process_due() == 0  # never retried
    assert sandbox.sent == [] and sandbox.refused == []  # never sent
    message = message_row(engine, message_id)
    assert (message.status, message.error_code) == ("failed", code)
    row = outbox_row(engine, outbox_id)
    assert row.state == "failed" and words in row.last_error


def test_given_text_over_4096_when_processed_then_content_policy_fails_it_unsent(
    engine: Engine, twilio_account: int, alice: int, clock: Clock, sandbox: TwilioSandbox
) -> None:
    body = {**text_message(ALICE, "x"), "text": {"body": "x" * 5000}}
    message_id, outbox_id = queue(engine, twilio_account, body, clock, contact_id=alice)

    make_worker(engine, clock, sandbox).process_due()

    assert sandbox.sent == [] and sandbox.refused == []
    assert message_row(engine, message_id).error_code == "content_policy"
    assert "4096" in outbox_row(engine, outbox_id).last_error


# --- Twilio's errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [(429, 20429), (400, 63018), (429, 63017)],
)
def test_given_rate_limit_when_processed_then_retried_later_and_number_paused(
    engine: Engine,
    twilio_account: int,
    alice: int,
    clock: Clock,
    sandbox: TwilioSandbox,
    status: int,
    code: int,
) -> None:
    bob = add_contact(engine, twilio_account, BOB, clock.now - timedelta(hours=1))
    sandbox.fail_next(status, code, "slow down")
    _, first = queue(engine, twilio_account, text_message(ALICE, "one"), clock, contact_id=alice)
    _, second = queue(engine, twilio_account, text_message(BOB, "two"), clock, contact_id=bob)
    worker = make_worker(engine, clock, sandbox)

    worker.process_due()

    assert sandbox.sent == []  # Bob's message waits too: the whole number backs off
    row = outbox_row(engine, first)
    assert (row.state, row.attempts) == ("pending", 1)
    assert row.next_attempt_at > clock.now and f"#{code}" in row.last_error
    assert outbox_row(engine, second).next_attempt_at > clock.now
    clock.advance(3600)
    worker.process_due()
    assert sorted(m.form["Body"] for m in sandbox.sent) == ["one", "two"]


def test_given_5xx_without_code_when_processed_then_backoff_then_sent(
    engine: Engine, twilio_account: int, alice: int, clock: Clock, sandbox: TwilioSandbox
) -> None:
    sandbox.fail_next(503, None, "Service Unavailable")
    message_id, outbox_id = queue(
        engine, twilio_account, text_message(ALICE, "hi"), clock, contact_id=alice
    )
    worker = make_worker(engine, clock, sandbox)

    worker.process_due()
    assert outbox_row(engine, outbox_id).state == "pending"
    clock.advance(60)
    worker.process_due()

    assert outbox_row(engine, outbox_id).state == "sent"
    assert message_row(engine, message_id).provider_message_id == sandbox.sent[0].sid


@pytest.mark.parametrize("code", [21211, 21614, 63003, 63024])
def test_given_invalid_to_when_processed_then_failed_never_retried_and_contact_flagged(
    engine: Engine,
    twilio_account: int,
    alice: int,
    clock: Clock,
    sandbox: TwilioSandbox,
    code: int,
) -> None:
    sandbox.fail_next(400, code, "The 'To' number is not valid")
    message_id, outbox_id = queue(
        engine, twilio_account, text_message(ALICE, "hi"), clock, contact_id=alice
    )
    worker = make_worker(engine, clock, sandbox)

    worker.process_due()
    clock.advance(3600)
    worker.process_due()

    assert len(sandbox.refused) == 1 and sandbox.sent == []
    assert (message_row(engine, message_id).error_code, outbox_row(engine, outbox_id).state) == (
        str(code),
        "failed",
    )
    assert contact_tags(engine, alice) == ["wa-undeliverable"]


def test_given_63016_with_template_fallback_when_processed_then_template_sent_by_content_sid(
    engine: Engine, twilio_account: int, alice: int, clock: Clock, sandbox: TwilioSandbox
) -> None:
    sandbox.fail_next(400, 63016, "Outside messaging window")
    fallback = template_message(ALICE, "hello", "en_US", body_parameters("Ana"))
    message_id, _ = queue(
        engine,
        twilio_account,
        text_message(ALICE, "hi"),
        clock,
        contact_id=alice,
        fallback=fallback,
    )

    make_worker(engine, clock, sandbox).process_due()

    [sent] = sandbox.sent
    assert (sent.form["ContentSid"], sent.form["ContentVariables"]) == (HELLO_SID, '{"1":"Ana"}')
    assert "Body" not in sent.form
    message = message_row(engine, message_id)
    assert (message.type, message.provider_message_id) == ("template", sent.sid)


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (400, 63016, "Outside messaging window"),
        (400, 21655, "The ContentSid is invalid"),
        (400, 63021, "Channel invalid content"),
        (400, 12345, "Something Twilio added"),  # unknown 4xx: the request, not Twilio
    ],
)
def test_given_permanent_refusal_when_processed_then_failed_once_with_code(
    engine: Engine,
    twilio_account: int,
    alice: int,
    clock: Clock,
    sandbox: TwilioSandbox,
    status: int,
    code: int,
    reason: str,
) -> None:
    sandbox.fail_next(status, code, "Something Twilio added")
    message_id, outbox_id = queue(
        engine, twilio_account, text_message(ALICE, "hi"), clock, contact_id=alice
    )
    worker = make_worker(engine, clock, sandbox)

    worker.process_due()
    clock.advance(3600)
    worker.process_due()

    assert len(sandbox.refused) == 1
    message = message_row(engine, message_id)
    assert (message.status, message.error_code, message.error_title) == (
        "failed",
        str(code),
        reason,
    )
    assert (outbox_row(engine, outbox_id).state, contact_tags(engine, alice)) == ("failed", [])


def test_given_twilio_credentials_rejected_when_processed_then_twilio_pauses_meta_goes_on(
    engine: Engine,
    twilio_account: int,
    alice: int,
    clock: Clock,
    sandbox: TwilioSandbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    graph = Graph()
    wrong = "wrong-twilio-token-secret"
    _, twilio_row = queue(
        engine, twilio_account, text_message(ALICE, "t1"), clock, contact_id=alice
    )
    worker = make_worker(engine, clock, sandbox, graph=graph, token=wrong)

    with caplog.at_level(logging.DEBUG):
        worker.process_due()
        queue(engine, twilio_account, text_message(ALICE, "t2"), clock, contact_id=alice)
        queue(engine, twilio_account, text_message(ALICE, "m1"), clock, number=PHONE_NUMBER_ID)
        clock.advance(60)
        worker.process_due()

    assert sandbox.refused == [(401, 20003)]  # one request, then paused: no spinning
    assert [b["text"]["body"] for b in graph.bodies] == ["m1"]  # Meta is not paused
    row = outbox_row(engine, twilio_row)
    assert (row.state, row.attempts) == ("pending", 0)
    assert row.next_attempt_at == clock.now + timedelta(minutes=4)
    assert "WACRM_TWILIO_AUTH_TOKEN" in caplog.text
    assert wrong not in caplog.text and AUTH_TOKEN not in caplog.text


@pytest.mark.parametrize("code", [63007, 20403])
def test_given_sender_or_account_unusable_when_processed_then_number_halted_and_alerted(
    engine: Engine,
    twilio_account: int,
    alice: int,
    clock: Clock,
    sandbox: TwilioSandbox,
    caplog: pytest.LogCaptureFixture,
    code: int,
) -> None:
    sandbox.fail_next(400 if code == 63007 else 403, code, "not usable")
    _, outbox_id = queue(engine, twilio_account, text_message(ALICE, "hi"), clock, contact_id=alice)
    worker = make_worker(engine, clock, sandbox)

    worker.process_due()
    clock.advance(3600)
    while_halted = worker.process_due()

    assert TWILIO_NUMBER in worker.halted and "ALERT" in caplog.text
    assert while_halted == 0 and outbox_row(engine, outbox_id).state == "pending"
    worker.resume(TWILIO_NUMBER)
    worker.process_due()
    assert outbox_row(engine, outbox_id).state == "sent"


def test_given_twilio_not_configured_when_twilio_row_due_then_number_halted_meta_sent(
    engine: Engine,
    twilio_account: int,
    alice: int,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    graph = Graph()
    _, twilio_row = queue(engine, twilio_account, text_message(ALICE, "t"), clock, contact_id=alice)
    queue(engine, twilio_account, text_message(ALICE, "m"), clock, number=PHONE_NUMBER_ID)
    worker = make_worker(engine, clock, None, graph=graph)

    worker.process_due()

    assert [b["text"]["body"] for b in graph.bodies] == ["m"]
    assert outbox_row(engine, twilio_row).state == "pending"
    assert "WACRM_TWILIO_ACCOUNT_SID and WACRM_TWILIO_AUTH_TOKEN" in caplog.text
    assert TWILIO_NUMBER in worker.halted


# --- window and pacing ---------------------------------------------------------------------


def test_given_window_closed_and_no_fallback_when_processed_then_refused_locally_63016(
    engine: Engine, twilio_account: int, clock: Clock, sandbox: TwilioSandbox
) -> None:
    cold = add_contact(engine, twilio_account, BOB, clock.now - timedelta(days=3))
    message_id, _ = queue(engine, twilio_account, text_message(BOB, "hi"), clock, contact_id=cold)

    make_worker(engine, clock, sandbox).process_due()

    assert sandbox.sent == [] and sandbox.refused == []
    message = message_row(engine, message_id)
    assert (message.error_code, message.error_title) == ("63016", "Outside messaging window")


def test_given_50_messages_to_one_user_when_processed_then_pair_rate_paces_twilio_too(
    engine: Engine, twilio_account: int, alice: int, clock: Clock, sandbox: TwilioSandbox
) -> None:
    for n in range(50):
        queue(engine, twilio_account, text_message(ALICE, f"m{n}"), clock, contact_id=alice)
    worker = make_worker(engine, clock, sandbox, batch_size=100)

    worker.process_due()

    # WhatsApp's pair rate (bursts of 45 borrowing 45 × 6 s, then ~1 per 6 s) holds
    # whoever sends: the rest follow in order once the borrowed quota is paid back.
    assert [m.form["Body"] for m in sandbox.sent] == [f"m{n}" for n in range(45)]
    clock.advance(6.0)
    worker.process_due()
    assert len(sandbox.sent) == 45
    for _ in range(50):
        clock.advance(6.0)
        worker.process_due()
    assert [m.form["Body"] for m in sandbox.sent] == [f"m{n}" for n in range(50)]


# --- end to end: the SID Twilio returned is what its status callbacks move -----------------


async def test_given_sent_via_twilio_when_signed_status_callbacks_posted_then_delivered(
    engine: Engine, twilio_account: int, alice: int, clock: Clock, sandbox: TwilioSandbox
) -> None:
    message_id, _ = queue(
        engine, twilio_account, text_message(ALICE, "Your order shipped"), clock, contact_id=alice
    )
    worker = make_worker(engine, clock, sandbox)
    worker.process_due()
    [sent] = sandbox.sent
    processor = InboxProcessor(engine, twilio_settings(), rules=RuleRuntime(load_ruleset()))

    async with serving(create_app(twilio_settings(), engine)) as app:
        answers = await sandbox.deliver(sent.sid, app, statuses=("sent", "delivered"))
        processor.process_pending()
        delivered = message_row(engine, message_id)
        late = await sandbox.deliver(sent.sid, app, statuses=("sent",))  # out of order
        processor.process_pending()

    assert answers == [200, 200] and late == [200]
    assert sent.status_callback == CALLBACK
    assert (delivered.status, delivered.provider_message_id) == ("delivered", sent.sid)
    assert message_row(engine, message_id).status == "delivered"  # only moves forward


async def test_given_inbound_twilio_question_when_rules_reply_then_reply_goes_via_twilio_and_read(
    engine: Engine, twilio_account: int, clock: Clock, sandbox: TwilioSandbox
) -> None:
    inbound = {
        "MessageSid": "SM" + "c" * 32,
        "SmsSid": "SM" + "c" * 32,
        "AccountSid": ACCOUNT_SID,
        "From": "whatsapp:" + ALICE,
        "To": TWILIO_NUMBER,
        "Body": "Hi, what is the price?",
        "NumMedia": "0",
        "ProfileName": "Alice",
        "WaId": ALICE.lstrip("+"),
        "MessageType": "text",
    }
    body, headers = signed_form(inbound)
    clock.now = datetime.now(UTC) + timedelta(minutes=1)  # the app and processor run on real time
    processor = InboxProcessor(
        engine,
        twilio_settings(),
        rules=RuleRuntime(load_ruleset(), values={"price_list": "PRICES-XYZ"}),
    )
    worker = make_worker(engine, clock, sandbox, enforce_window=False)

    async with serving(create_app(twilio_settings(), engine)) as app:
        assert (await app.post(CALLBACK, content=body, headers=headers)).status_code == 200
        processor.process_pending()
        worker.process_due()
        [reply] = sandbox.sent
        await sandbox.deliver(reply.sid, app)
        processor.process_pending()

    assert (reply.form["From"], reply.form["To"]) == (TWILIO_NUMBER, "whatsapp:" + ALICE)
    assert "PRICES-XYZ" in reply.form["Body"]  # the shipped price-list rule answered
    with engine.connect() as conn:
        row = conn.execute(
            select(messages).where(messages.c.provider_message_id == reply.sid)
        ).one()
    assert (row.direction, row.provider, row.status) == ("out", "twilio", "read")


# --- send now (``wacrm send``) through Twilio ---------------------------------------------


def twilio_sender(sandbox: TwilioSandbox) -> TwilioSender:
    http = httpx.Client(transport=httpx.MockTransport(sandbox.handler))
    return TwilioSender(http, ACCOUNT_SID, Secret(AUTH_TOKEN), TWILIO_BASE)


def test_given_twilio_route_when_send_now_then_sent_with_sid(
    engine: Engine, twilio_account: int, alice: int, clock: Clock, sandbox: TwilioSandbox
) -> None:
    outcome = send_now(
        engine,
        twilio_settings(),
        None,
        text_message(ALICE, "hi"),
        account_id=twilio_account,
        phone_number_id=TWILIO_NUMBER,
        twilio=twilio_sender(sandbox),
        provider="twilio",
        clock=clock,
        sleep=clock.sleep,
    )

    assert (outcome.state, outcome.provider_message_id) == ("sent", sandbox.sent[0].sid)
    assert message_row(engine, outcome.message_id).provider == "twilio"


def test_given_earlier_message_waiting_when_send_now_then_returns_pending_at_the_deadline(
    engine: Engine, twilio_account: int, alice: int, clock: Clock, sandbox: TwilioSandbox
) -> None:
    _, first = queue(engine, twilio_account, text_message(ALICE, "first"), clock, contact_id=alice)
    with engine.begin() as conn:  # retrying in an hour: order keeps "second" behind it
        conn.execute(
            wa_outbox.update()
            .where(wa_outbox.c.id == first)
            .values(next_attempt_at=clock.now + timedelta(hours=1))
        )
    start = clock.now

    outcome = send_now(
        engine,
        twilio_settings(),
        None,
        text_message(ALICE, "second"),
        account_id=twilio_account,
        phone_number_id=TWILIO_NUMBER,
        twilio=twilio_sender(sandbox),
        provider="twilio",
        timeout=5.0,
        clock=clock,
        sleep=clock.sleep,
    )

    assert outcome.state == "pending" and sandbox.sent == []
    assert timedelta(seconds=5) <= clock.now - start < timedelta(seconds=7)
