"""The WhatsApp sandbox: Meta's send endpoint, its refusals, and signed status webhooks.

Requests go through ``httpx.ASGITransport`` (no sockets); webhooks go to an in-process
receiver (``httpx.MockTransport``) and time is a fake clock, so nothing waits.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from wacrm.cli import cli
from wacrm.model import DeliveryStatus
from wacrm.sandbox.whatsapp import SandboxConfig, WhatsAppSandbox, create_sandbox_app
from wacrm.sandbox.whatsapp_checks import GraphError
from wacrm.sandbox.whatsapp_media import MediaStore
from wacrm.sandbox.whatsapp_payloads import business_scoped_user_id
from wacrm.whatsapp.meta_webhook import (
    parse_message,
    parse_status,
    split_envelope,
    verify_signature,
)

TOKEN = "sandbox-token-not-a-secret"
SECRET = "sandbox-app-secret"
PNID = "106540352242922"
HOOK = "http://receiver.test/webhooks/whatsapp"
URL = f"/v25.0/{PNID}/messages"


@dataclass
class Clock:
    now: float = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Receiver:
    """The webhook endpoint: answers from ``answers`` (then 200) and keeps what it got."""

    answers: list[int] = field(default_factory=list)
    got: list[httpx.Request] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.got.append(request)
        return httpx.Response(self.answers.pop(0) if self.answers else 200)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.got]

    def statuses(self) -> list[str]:
        return [
            s["status"]
            for b in self.bodies()
            for e in b["entry"]
            for c in e["changes"]
            for s in c["value"].get("statuses", [])
        ]


def config(**overrides: Any) -> SandboxConfig:
    base = SandboxConfig(access_token=TOKEN, app_secret=SECRET, webhook_url=HOOK)
    return replace(base, **overrides)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
def make_sandbox(clock: Clock, receiver: Receiver) -> Callable[..., WhatsAppSandbox]:
    def make(**overrides: Any) -> WhatsAppSandbox:
        hooks = httpx.AsyncClient(transport=httpx.MockTransport(receiver.handler))
        return WhatsAppSandbox(config(**overrides), clock=clock, webhook_http=hooks)

    return make


@pytest.fixture
def sandbox(make_sandbox: Callable[..., WhatsAppSandbox]) -> WhatsAppSandbox:
    return make_sandbox()


@pytest.fixture
async def api(sandbox: WhatsAppSandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(sandbox) as client:
        yield client


def client_for(sandbox: WhatsAppSandbox, token: str = TOKEN) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox.app),
        base_url="http://sandbox.test",
        headers={"Authorization": f"Bearer {token}"},
    )


def text(to: str = "+16505551234", body: str = "Hello", **extra: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"body": body},
        **extra,
    }


# --- the send endpoint ---------------------------------------------------------------------


async def test_given_valid_text_when_send_then_accepted_with_wamid_and_recorded(
    api: httpx.AsyncClient, sandbox: WhatsAppSandbox
) -> None:
    response = await api.post(URL, json=text("+1 650-555-1234"))

    assert response.status_code == 200
    doc = response.json()
    assert doc["messaging_product"] == "whatsapp"
    assert doc["contacts"] == [{"input": "+1 650-555-1234", "wa_id": "16505551234"}]
    wamid = doc["messages"][0]["id"]
    assert wamid.startswith("wamid.")
    assert [(s.wamid, s.wa_id, s.type) for s in sandbox.sent] == [(wamid, "16505551234", "text")]


async def test_given_many_sends_when_accepted_then_every_wamid_is_unique(
    make_sandbox: Callable[..., WhatsAppSandbox],
) -> None:
    first, second = make_sandbox(pair_limit=False), make_sandbox(pair_limit=False)
    ids = set()
    for sandbox in (first, second):
        async with client_for(sandbox) as client:
            for _ in range(20):
                ids.add((await client.post(URL, json=text())).json()["messages"][0]["id"])

    assert len(ids) == 40
    assert len(first.sent) == len(second.sent) == 20  # no state shared between instances


@pytest.mark.parametrize("token", ["wrong-token", ""])
async def test_given_bad_token_when_send_then_401_graph_oauth_error(
    sandbox: WhatsAppSandbox, token: str
) -> None:
    async with client_for(sandbox, token) as client:
        response = await client.post(URL, json=text())

    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == 190
    assert error["type"] == "OAuthException"
    assert error["fbtrace_id"]
    assert TOKEN not in response.text
    assert sandbox.sent == []


async def test_given_no_authorization_header_when_send_then_401(
    sandbox: WhatsAppSandbox,
) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox.app), base_url="http://sandbox.test"
    ) as client:
        response = await client.post(URL, json=text())

    assert response.status_code == 401
    assert response.json()["error"]["code"] == 190


async def test_given_unserved_phone_number_id_when_send_then_graph_method_exception(
    api: httpx.AsyncClient,
) -> None:
    response = await api.post("/v25.0/999/messages", json=text())

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["error_subcode"], error["type"]) == (
        100,
        33,
        "GraphMethodException",
    )


def _button(i: int, title: str = "OK") -> dict[str, Any]:
    return {"type": "reply", "reply": {"id": f"b{i}", "title": f"{title}{i}"}}


def _interactive(buttons: list[dict[str, Any]]) -> dict[str, Any]:
    body = text()
    del body["text"]
    body["type"] = "interactive"
    body["interactive"] = {
        "type": "button",
        "body": {"text": "Pick one"},
        "action": {"buttons": buttons},
    }
    return body


INVALID = [
    ("no messaging_product", {k: v for k, v in text().items() if k != "messaging_product"}, 100),
    ("wrong messaging_product", {**text(), "messaging_product": "sms"}, 100),
    ("no to", {k: v for k, v in text().items() if k != "to"}, 100),
    ("national number", text("0612345678"), 131009),
    ("letters in number", text("+1650CALLME"), 131009),
    ("too short", text("+1234"), 131009),
    ("unknown type", {**text(), "type": "fax"}, 100),
    ("no text object", {k: v for k, v in text().items() if k != "text"}, 131008),
    ("empty body", text(body=""), 131009),
    ("body over 4096", text(body="x" * 4097), 131009),
    ("four buttons", _interactive([_button(i) for i in range(4)]), 131009),
    ("button title over 20", _interactive([_button(1, "x" * 20)]), 131009),
    ("callback data over 512", text(biz_opaque_callback_data="x" * 513), 131009),
    (
        "media id and link",
        {**text(), "type": "image", "image": {"id": "1", "link": "https://x.test/a.png"}},
        131009,
    ),
    (
        "template without language",
        {**text(), "type": "template", "template": {"name": "hello_world"}},
        131008,
    ),
]


@pytest.mark.parametrize(("case", "body", "code"), INVALID, ids=[c[0] for c in INVALID])
async def test_given_invalid_body_when_send_then_400_with_graph_error_code(
    api: httpx.AsyncClient, sandbox: WhatsAppSandbox, case: str, body: dict[str, Any], code: int
) -> None:
    response = await api.post(URL, json=body)

    assert response.status_code == 400, case
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"].startswith(f"(#{code})")
    assert error["fbtrace_id"]
    assert sandbox.sent == []
    assert sandbox.refused[-1].code == code


async def test_given_non_json_body_when_send_then_400_code_100(api: httpx.AsyncClient) -> None:
    response = await api.post(URL, content=b"to=+16505551234")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == 100


async def test_given_body_of_exactly_4096_when_send_then_accepted(api: httpx.AsyncClient) -> None:
    response = await api.post(URL, json=text(body="é" * 4096))

    assert response.status_code == 200


async def test_given_type_omitted_when_send_then_treated_as_text(
    api: httpx.AsyncClient, sandbox: WhatsAppSandbox
) -> None:
    body = text()
    del body["type"]

    response = await api.post(URL, json=body)

    assert response.status_code == 200
    assert sandbox.sent[0].type == "text"


async def test_given_template_registry_when_unknown_language_then_132001(
    make_sandbox: Callable[..., WhatsAppSandbox],
) -> None:
    sandbox = make_sandbox(templates={"order_update": frozenset({"en_US"})})
    template = {**text(), "type": "template"}
    del template["text"]
    async with client_for(sandbox) as client:
        ok = await client.post(
            URL,
            json={**template, "template": {"name": "order_update", "language": {"code": "en_US"}}},
        )
        missing = await client.post(
            URL,
            json={**template, "template": {"name": "order_update", "language": {"code": "de"}}},
        )

    assert ok.status_code == 200
    assert missing.json()["error"]["code"] == 132001


# --- status webhooks -----------------------------------------------------------------------


async def test_given_accepted_send_when_delivered_then_sent_delivered_read_signed_in_meta_shape(
    api: httpx.AsyncClient, sandbox: WhatsAppSandbox, receiver: Receiver
) -> None:
    response = await api.post(URL, json=text(biz_opaque_callback_data="outbox-7"))
    wamid = response.json()["messages"][0]["id"]

    await sandbox.drain()

    assert receiver.statuses() == ["sent", "delivered", "read"]
    for request in receiver.got:
        assert request.url == HOOK
        assert verify_signature(request.content, request.headers["x-hub-signature-256"], SECRET)
        assert not verify_signature(request.content, request.headers["x-hub-signature-256"], "x")
    body = receiver.bodies()[0]
    assert body["object"] == "whatsapp_business_account"
    assert body["entry"][0]["changes"][0]["field"] == "messages"
    value = body["entry"][0]["changes"][0]["value"]
    assert value["metadata"] == {"display_phone_number": "15550783881", "phone_number_id": PNID}
    status = value["statuses"][0]
    assert status["biz_opaque_callback_data"] == "outbox-7"
    assert status["pricing"]["pricing_model"] == "PMP"
    assert "conversation" not in status  # v24+ omits it
    parsed = [parse_status(event.payload) for b in receiver.bodies() for event in split_envelope(b)]
    assert [(p.provider_message_id, p.recipient_id, p.phone_number_id) for p in parsed] == [
        (wamid, "16505551234", PNID)
    ] * 3
    assert [p.status for p in parsed] == [
        DeliveryStatus.SENT,
        DeliveryStatus.DELIVERED,
        DeliveryStatus.READ,
    ]


async def test_given_old_api_version_when_status_posted_then_conversation_included(
    api: httpx.AsyncClient, sandbox: WhatsAppSandbox, receiver: Receiver
) -> None:
    await api.post(f"/v23.0/{PNID}/messages", json=text())

    await sandbox.drain()

    sent = receiver.bodies()[0]["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert sent["conversation"]["origin"] == {"type": "service"}
    assert "expiration_timestamp" in sent["conversation"]


async def test_given_status_delays_when_clock_advances_then_each_status_posts_on_time(
    api: httpx.AsyncClient, sandbox: WhatsAppSandbox, receiver: Receiver, clock: Clock
) -> None:
    await api.post(URL, json=text())

    await sandbox.deliver_due()
    after_send = receiver.statuses()
    clock.now += 0.5
    await sandbox.deliver_due()
    after_half_second = receiver.statuses()
    clock.now += 1.5
    await sandbox.deliver_due()

    assert after_send == ["sent"]
    assert after_half_second == ["sent", "delivered"]
    assert receiver.statuses() == ["sent", "delivered", "read"]
    assert sandbox.pending() == 0


async def test_given_delivered_left_out_when_read_at_once_then_no_delivered_webhook(
    make_sandbox: Callable[..., WhatsAppSandbox], receiver: Receiver
) -> None:
    sandbox = make_sandbox(status_delays={"sent": 0.0, "read": 0.0})
    async with client_for(sandbox) as client:
        await client.post(URL, json=text())

    await sandbox.drain()

    assert receiver.statuses() == ["sent", "read"]


async def test_given_receiver_fails_then_recovers_when_delivering_then_retried_until_200(
    make_sandbox: Callable[..., WhatsAppSandbox], receiver: Receiver, clock: Clock
) -> None:
    sandbox = make_sandbox(status_delays={"sent": 0.0}, webhook_retry_base=1.0)
    receiver.answers = [500, 204]  # Meta retries anything but 200, even another 2xx
    async with client_for(sandbox) as client:
        await client.post(URL, json=text())
    posted = []

    for step in (0.0, 0.9, 0.1, 1.9, 0.1):  # t = 0, 0.9, 1.0, 2.9, 3.0
        clock.now += step
        await sandbox.deliver_due()
        posted.append(len(receiver.got))

    assert posted == [1, 1, 2, 2, 3]  # retries after 1 s, then 2 s more (doubling)
    assert [(d.attempt, d.status) for d in sandbox.deliveries] == [(1, 500), (2, 204), (3, 200)]
    assert len({r.content for r in receiver.got}) == 1  # a retry resends the same bytes
    assert sandbox.pending() == 0
    assert sandbox.undelivered == []


async def test_given_receiver_always_fails_when_delivering_then_gives_up_after_max_attempts(
    make_sandbox: Callable[..., WhatsAppSandbox], receiver: Receiver
) -> None:
    sandbox = make_sandbox(status_delays={"sent": 0.0}, webhook_max_attempts=3)
    receiver.answers = [503] * 10
    async with client_for(sandbox) as client:
        await client.post(URL, json=text())

    await sandbox.drain()

    assert len(receiver.got) == 3
    assert len(sandbox.undelivered) == 1
    assert sandbox.pending() == 0


async def test_given_unreachable_receiver_when_delivering_then_recorded_and_retried(
    clock: Clock,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    hooks = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    sandbox = WhatsAppSandbox(
        config(status_delays={"sent": 0.0}, webhook_max_attempts=2),
        clock=clock,
        webhook_http=hooks,
    )
    async with client_for(sandbox) as client:
        await client.post(URL, json=text())

    await sandbox.drain()

    assert [d.status for d in sandbox.deliveries] == [None, None]
    assert len(sandbox.undelivered) == 1


async def test_given_no_webhook_url_when_delivering_then_nothing_posted(
    make_sandbox: Callable[..., WhatsAppSandbox], receiver: Receiver
) -> None:
    sandbox = make_sandbox(webhook_url=None)
    async with client_for(sandbox) as client:
        response = await client.post(URL, json=text())

    assert await sandbox.drain() == 0
    assert response.status_code == 200
    assert receiver.got == []


async def test_given_undeliverable_recipient_when_send_then_accepted_then_failed_131026(
    make_sandbox: Callable[..., WhatsAppSandbox], receiver: Receiver
) -> None:
    sandbox = make_sandbox(undeliverable=frozenset({"16505551234"}))
    async with client_for(sandbox) as client:
        response = await client.post(URL, json=text())

    await sandbox.drain()

    assert response.status_code == 200
    assert receiver.statuses() == ["failed"]
    status = receiver.bodies()[0]["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert status["errors"][0]["code"] == 131026
    assert status["errors"][0]["error_data"]["details"]


# --- limits (phase 2) ----------------------------------------------------------------------


async def test_given_mps_reached_when_send_then_130429_until_next_second(
    make_sandbox: Callable[..., WhatsAppSandbox], clock: Clock
) -> None:
    sandbox = make_sandbox(mps=3, pair_limit=False)
    async with client_for(sandbox) as client:
        first = [(await client.post(URL, json=text())).status_code for _ in range(4)]
        refused = sandbox.refused[-1].code
        clock.now += 1.0
        later = await client.post(URL, json=text())

    assert first == [200, 200, 200, 400]
    assert refused == 130429
    assert later.status_code == 200


async def test_given_inbound_messages_when_counting_mps_then_they_use_the_budget(
    make_sandbox: Callable[..., WhatsAppSandbox],
) -> None:
    sandbox = make_sandbox(mps=2, pair_limit=False)
    sandbox.inbound("+16505550000", "hi")
    sandbox.inbound("+16505550001", "hi")
    async with client_for(sandbox) as client:
        response = await client.post(URL, json=text())

    assert response.json()["error"]["code"] == 130429


async def test_given_burst_to_one_user_when_over_45_then_131056_and_others_unaffected(
    make_sandbox: Callable[..., WhatsAppSandbox], clock: Clock
) -> None:
    sandbox = make_sandbox(mps=None)
    async with client_for(sandbox) as client:
        burst = [(await client.post(URL, json=text())).status_code for _ in range(46)]
        other = await client.post(URL, json=text("+16505559999"))
        clock.now += 6.0
        paced_too_soon = await client.post(URL, json=text())
        clock.now += 45 * 6.0 - 12.0  # the burst borrowed 45 × 6 s of quota
        paid_back = await client.post(URL, json=text())

    assert burst[:45] == [200] * 45
    assert burst[45] == 400
    assert sandbox.refused[0].code == 131056
    assert other.status_code == 200
    assert paced_too_soon.json()["error"]["code"] == 131056
    assert paid_back.status_code == 200


async def test_given_one_message_every_6s_when_sending_then_never_pair_limited(
    make_sandbox: Callable[..., WhatsAppSandbox], clock: Clock
) -> None:
    sandbox = make_sandbox(mps=None)
    async with client_for(sandbox) as client:
        codes = []
        for _ in range(100):
            codes.append((await client.post(URL, json=text())).status_code)
            clock.now += 6.0

    assert codes == [200] * 100


async def test_given_window_enforced_when_user_never_wrote_then_accepted_then_failed_131047(
    make_sandbox: Callable[..., WhatsAppSandbox], receiver: Receiver
) -> None:
    sandbox = make_sandbox(enforce_window=True)
    template = {k: v for k, v in text().items() if k != "text"}
    template |= {"type": "template", "template": {"name": "hi", "language": {"code": "en"}}}
    async with client_for(sandbox) as client:
        free_form = await client.post(URL, json=text())
        templated = await client.post(URL, json=template)

    await sandbox.drain()

    assert free_form.status_code == templated.status_code == 200
    assert receiver.statuses() == ["failed", "sent", "delivered", "read"]
    failed = receiver.bodies()[0]["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert failed["errors"][0]["code"] == 131047
    templated_sent = receiver.bodies()[1]["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert templated_sent["pricing"]["billable"] is True


async def test_given_window_enforced_when_user_wrote_within_24h_then_free_form_delivered(
    make_sandbox: Callable[..., WhatsAppSandbox], receiver: Receiver, clock: Clock
) -> None:
    sandbox = make_sandbox(enforce_window=True)
    async with client_for(sandbox) as client:
        opened = await client.post("/_sandbox/inbound", json={"from": "+16505551234"})
        clock.now += 23 * 3600
        inside = await client.post(URL, json=text())
        clock.now += 3600
        outside = await client.post(URL, json=text())

    await sandbox.drain()

    assert opened.status_code == inside.status_code == outside.status_code == 200
    by_id: dict[str, list[str]] = {}
    for body in receiver.bodies():
        for s in body["entry"][0]["changes"][0]["value"].get("statuses", []):
            by_id.setdefault(s["id"], []).append(s["status"])
    assert by_id[inside.json()["messages"][0]["id"]] == ["sent", "delivered", "read"]
    assert by_id[outside.json()["messages"][0]["id"]] == ["failed"]


async def test_given_inbound_api_when_user_writes_then_signed_message_webhook_parses(
    api: httpx.AsyncClient, sandbox: WhatsAppSandbox, receiver: Receiver
) -> None:
    response = await api.post(
        "/_sandbox/inbound", json={"from": "+16505551234", "text": "Olá, preço?", "name": "Ana"}
    )

    await sandbox.drain()

    assert response.status_code == 200
    raw = receiver.got[0].content
    assert b"\\u00e1" in raw  # non-ASCII escaped like Meta: receivers must hash raw bytes
    assert verify_signature(raw, receiver.got[0].headers["x-hub-signature-256"], SECRET)
    (event,) = list(split_envelope(json.loads(raw)))
    message = parse_message(event.payload)
    assert message.provider_message_id == response.json()["id"]
    assert (message.from_wa_id, message.text, message.profile_name) == (
        "16505551234",
        "Olá, preço?",
        "Ana",
    )


async def test_given_bad_inbound_request_when_posted_then_400(api: httpx.AsyncClient) -> None:
    missing_from = await api.post("/_sandbox/inbound", json={"text": "hi"})
    bad_number = await api.post("/_sandbox/inbound", json={"from": "12"})

    assert missing_from.status_code == bad_number.status_code == 400


async def test_given_sends_when_listing_then_sandbox_sent_endpoint_shows_them(
    api: httpx.AsyncClient,
) -> None:
    await api.post(URL, json=text(body="one"))

    listed = (await api.get("/_sandbox/sent")).json()

    assert [(m["wa_id"], m["body"]["text"]["body"]) for m in listed] == [("16505551234", "one")]


def test_given_config_without_secrets_when_created_then_refused_and_repr_hides_them() -> None:
    with pytest.raises(ValueError, match="access token"):
        SandboxConfig(access_token="", app_secret=SECRET)

    assert TOKEN not in repr(config())
    assert SECRET not in repr(config())


def test_given_create_sandbox_app_when_called_then_sandbox_on_app_state() -> None:
    app = create_sandbox_app(config())

    assert isinstance(app.state.sandbox, WhatsAppSandbox)
    assert app.state.sandbox.app is app


# --- ``wacrm sandbox whatsapp`` --------------------------------------------------------------


def test_given_secrets_in_env_when_sandbox_command_then_serves_them_and_prints_base_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    served: list[tuple[SandboxConfig, str, int]] = []
    monkeypatch.setattr(
        "wacrm.sandbox.whatsapp.serve_sandbox",
        lambda config, host, port: served.append((config, host, port)),
    )
    env = {
        "WACRM_CONFIG": str(tmp_path / "none.toml"),
        "WACRM_WHATSAPP_ACCESS_TOKEN": TOKEN,
        "WACRM_WHATSAPP_APP_SECRET": SECRET,
        "WACRM_WHATSAPP_PHONE_NUMBER_ID": "555",
    }

    result = CliRunner().invoke(
        cli, ["sandbox", "whatsapp", "--port", "9123", "--webhook-url", HOOK], env=env
    )

    assert result.exit_code == 0, result.output
    assert "WACRM_WHATSAPP_API_BASE_URL=http://127.0.0.1:9123" in result.output
    (config, host, port) = served[0]
    assert (host, port, config.webhook_url) == ("127.0.0.1", 9123, HOOK)
    assert (config.access_token, config.app_secret) == (TOKEN, SECRET)
    assert list(config.phone_numbers) == ["555"]
    assert TOKEN not in result.output and SECRET not in result.output


def test_given_no_secrets_when_sandbox_command_then_usage_error(tmp_path: Path) -> None:
    env = {
        "WACRM_CONFIG": str(tmp_path / "none.toml"),
        "WACRM_WHATSAPP_ACCESS_TOKEN": "",
        "WACRM_WHATSAPP_APP_SECRET": "",
    }

    result = CliRunner().invoke(cli, ["sandbox", "whatsapp"], env=env)

    assert result.exit_code == 2
    assert "WACRM_WHATSAPP_ACCESS_TOKEN and WACRM_WHATSAPP_APP_SECRET" in result.output


@pytest.mark.parametrize("bsuids", [True, False])
async def test_given_user_writes_and_is_answered_when_delivered_then_bsuid_in_every_webhook(
    make_sandbox: Callable[..., WhatsAppSandbox], receiver: Receiver, bsuids: bool
) -> None:
    sandbox = make_sandbox(business_scoped_user_ids=bsuids)
    wamid = sandbox.inbound("+16505551234", "what is the price?")
    async with client_for(sandbox) as api:
        await api.post(URL, json=text())
        await sandbox.drain()

    events = [event for body in receiver.bodies() for event in split_envelope(body)]
    message = parse_message(next(e for e in events if e.kind == "message").payload)
    statuses = [parse_status(e.payload) for e in events if e.kind == "status"]
    expected = business_scoped_user_id(sandbox.config.waba_id, "16505551234") if bsuids else None
    assert message.provider_message_id == wamid
    assert message.from_user_id == expected
    assert [s.recipient_user_id for s in statuses] == [expected] * 3
    if bsuids:  # US. and 20 digits, the same user every time, another for another business
        assert expected is not None and expected.startswith("US.") and len(expected) == 23
        assert business_scoped_user_id("other-waba", "16505551234") != expected


def _webp(size: int, *, animated: bool) -> bytes:
    """A WebP of ``size`` bytes whose extended header says whether it is animated."""
    flags = b"\x02" if animated else b"\x00"
    head = b"RIFF" + (size - 8).to_bytes(4, "little") + b"WEBP" + b"VP8X" + b"\x0a\0\0\0" + flags
    return head + b"\0" * (size - len(head))


@pytest.mark.parametrize(
    ("size", "animated", "accepted"),
    [
        (100 * 1024, False, True),
        (100 * 1024 + 1, False, False),  # a static sticker: 100 KB at most
        (300 * 1024, True, True),  # an animated one: 500 KB
        (500 * 1024 + 1, True, False),
    ],
)
def test_given_sticker_upload_when_over_its_kind_limit_then_131053(
    size: int, animated: bool, accepted: bool
) -> None:
    request = httpx.Request(
        "POST",
        "http://sandbox.test/v25.0/1/media",
        data={"messaging_product": "whatsapp", "type": "image/webp"},
        files={"file": ("s.webp", _webp(size, animated=animated), "image/webp")},
    )
    store = MediaStore(lambda: 0.0)

    try:
        store.upload(request.read(), request.headers["content-type"])
        refused = None
    except GraphError as exc:
        refused = exc

    assert (refused is None) is accepted
    if refused is not None:
        assert refused.code == 131053 and "sticker" in str(refused.details)
