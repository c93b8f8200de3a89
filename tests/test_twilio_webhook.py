"""Twilio WhatsApp: signature (checked against Twilio's own SDK), the ``/webhooks/twilio``
endpoint into the inbox, and parsing into the same domain events as Meta's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
from conftest import APP_SECRET, VERIFY_TOKEN
from sqlalchemy import Engine, select
from test_server_webhooks import serving

from wacrm.config import Secret, Settings
from wacrm.model import DeliveryStatus, MessageType
from wacrm.server import create_app
from wacrm.store.accounts import ensure_account, register_number
from wacrm.store.schema import inbox, quarantine
from wacrm.whatsapp.twilio_webhook import (
    parse_twilio_message,
    parse_twilio_status,
    twilio_signature,
    verify_twilio_signature,
)

AUTH_TOKEN = "twilio-test-auth-token"
PUBLIC = "https://hooks.example.com"
URL = "/webhooks/twilio"
OUR_NUMBER = "whatsapp:+14155238886"
FIXTURES = "fixtures/whatsapp/twilio.json"


def fixture(name: str) -> dict[str, str]:
    with open(FIXTURES, encoding="utf-8") as f:
        found: dict[str, str] = orjson.loads(f.read())[name]["params"]
    return found


def signed_form(params: dict[str, str], url: str = PUBLIC + URL) -> tuple[bytes, dict[str, str]]:
    body = urlencode(params).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": twilio_signature(url, params.items(), AUTH_TOKEN),
    }
    return body, headers


@pytest.fixture
def twilio_account(engine: Engine) -> int:
    acc = ensure_account(engine, "twilio-acct")
    register_number(engine, acc, OUR_NUMBER, provider="twilio")
    return acc


@pytest.fixture
async def client(engine: Engine, twilio_account: int) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        whatsapp_app_secret=Secret(APP_SECRET),
        whatsapp_verify_token=Secret(VERIFY_TOKEN),
        twilio_auth_token=Secret(AUTH_TOKEN),
        public_url=PUBLIC,
    )
    async with serving(create_app(settings, engine)) as c:
        yield c


def rows(engine: Engine, table: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(table).order_by(table.c.id)))


# --- signature ------------------------------------------------------------------------------


def test_given_twilio_sdk_when_signing_same_request_then_same_signature() -> None:
    validator = pytest.importorskip("twilio.request_validator").RequestValidator(AUTH_TOKEN)
    url = "https://hooks.example.com/webhooks/twilio?tenant=acme&x=1"
    params = {**fixture("inbound_text"), "SomeFutureParam": "surprise", "Empty": ""}

    ours = twilio_signature(url, params.items(), AUTH_TOKEN)

    assert ours == validator.compute_signature(url, params)
    assert validator.validate(url, params, ours)
    assert verify_twilio_signature(url, params.items(), ours, AUTH_TOKEN)


def test_given_twilio_docs_example_when_signing_then_documented_signature() -> None:
    # The example in Twilio's security docs (token 12345); the SDK computes the same value.
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }

    assert twilio_signature(url, params.items(), "12345") == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


@pytest.mark.parametrize(
    ("signed_url", "checked_url"),
    [
        ("https://hooks.example.com:443/webhooks/twilio", "https://hooks.example.com/webhooks/twilio"),
        ("https://hooks.example.com/webhooks/twilio", "https://hooks.example.com:443/webhooks/twilio"),
    ],
)  # fmt: skip
def test_given_port_written_differently_when_verifying_then_accepted(
    signed_url: str, checked_url: str
) -> None:
    params = fixture("inbound_text")
    signature = twilio_signature(signed_url, params.items(), AUTH_TOKEN)

    assert verify_twilio_signature(checked_url, params.items(), signature, AUTH_TOKEN)


def test_given_tampered_param_or_wrong_token_when_verifying_then_refused() -> None:
    params = fixture("inbound_text")
    url = PUBLIC + URL
    signature = twilio_signature(url, params.items(), AUTH_TOKEN)

    tampered = {**params, "Body": "send me the money"}

    assert not verify_twilio_signature(url, tampered.items(), signature, AUTH_TOKEN)
    assert not verify_twilio_signature(url, params.items(), signature, "other-token")
    assert not verify_twilio_signature(url, params.items(), signature, "")
    assert not verify_twilio_signature(url, params.items(), None, AUTH_TOKEN)


# --- endpoint -------------------------------------------------------------------------------


async def test_given_signed_inbound_with_unknown_params_when_posted_then_stored_once_with_twiml(
    client: httpx.AsyncClient, engine: Engine, twilio_account: int
) -> None:
    params = {**fixture("inbound_text"), "ParamTwilioAddsLater": "x"}
    body, headers = signed_form(params)

    first = await client.post(URL, content=body, headers=headers)
    again = await client.post(URL, content=body, headers=headers)

    assert (first.status_code, again.status_code) == (200, 200)
    assert first.headers["content-type"].startswith("text/xml")
    assert "<Response>" in first.text
    [row] = rows(engine, inbox)
    assert (row.account_id, row.provider, row.kind) == (twilio_account, "twilio", "message")
    assert row.event_id == params["MessageSid"]
    message = parse_twilio_message(orjson.loads(row.payload))
    assert message.text == params["Body"]
    assert message.from_wa_id == params["WaId"]


async def test_given_status_callbacks_when_posted_then_one_row_per_sid_and_status(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    sent, failed = fixture("status_sent"), fixture("status_failed_63016")

    for params in (sent, failed, sent):
        body, headers = signed_form(params)
        assert (await client.post(URL, content=body, headers=headers)).status_code == 200

    stored = rows(engine, inbox)
    assert [(r.kind, r.event_id) for r in stored] == [
        ("status", f"{sent['MessageSid']}:sent"),
        ("status", f"{failed['MessageSid']}:failed"),
    ]
    update = parse_twilio_status(orjson.loads(stored[1].payload))
    assert update.status is DeliveryStatus.FAILED
    assert update.error_details[0].code == 63016


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h: h.pop("X-Twilio-Signature"), "missing X-Twilio-Signature"),
        (lambda h: h.update({"X-Twilio-Signature": "AAAA"}), "does not match"),
    ],
)
async def test_given_bad_signature_when_posted_then_401_and_nothing_stored(
    client: httpx.AsyncClient, engine: Engine, mutate: Any, reason: str
) -> None:
    body, headers = signed_form(fixture("inbound_text"))
    mutate(headers)

    response = await client.post(URL, content=body, headers=headers)

    assert response.status_code == 401
    assert reason in response.json()["error"]
    assert AUTH_TOKEN not in response.text
    assert rows(engine, inbox) == [] and rows(engine, quarantine) == []


async def test_given_signature_over_internal_url_when_public_url_set_then_refused(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    # What the server sees (http://wacrm) is not what Twilio called (PUBLIC).
    body, headers = signed_form(fixture("inbound_text"), url="http://wacrm" + URL)

    response = await client.post(URL, content=body, headers=headers)

    assert response.status_code == 401
    assert "WACRM_PUBLIC_URL" in response.json()["error"]


async def test_given_unregistered_number_when_posted_then_quarantined_and_200(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    params = {**fixture("inbound_text"), "To": "whatsapp:+15550000000"}
    body, headers = signed_form(params)

    response = await client.post(URL, content=body, headers=headers)

    assert response.status_code == 200
    assert rows(engine, inbox) == []
    [row] = rows(engine, quarantine)
    assert "whatsapp:+15550000000 is not registered" in row.reason
    assert row.source == "webhook:twilio"


async def test_given_no_auth_token_configured_when_posted_then_404_fail_closed(
    engine: Engine, twilio_account: int
) -> None:
    settings = Settings(
        whatsapp_app_secret=Secret(APP_SECRET), whatsapp_verify_token=Secret(VERIFY_TOKEN)
    )
    body, headers = signed_form(fixture("inbound_text"))

    async with serving(create_app(settings, engine)) as c:
        response = await c.post(URL, content=body, headers=headers)

    assert response.status_code == 404
    assert "WACRM_TWILIO_AUTH_TOKEN" in response.json()["error"]
    assert rows(engine, inbox) == []


# --- parsing: the same domain events as Meta ------------------------------------------------


def test_given_media_location_button_and_ad_referral_when_parsed_then_typed_fields() -> None:
    media = parse_twilio_message({"message": fixture("inbound_image"), "received_at": 1})
    place = parse_twilio_message({"message": fixture("inbound_location"), "received_at": 1})
    button = parse_twilio_message({"message": fixture("inbound_button"), "received_at": 1})
    ad = parse_twilio_message({"message": fixture("inbound_ctwa_referral"), "received_at": 1})

    assert media.type is MessageType.IMAGE
    assert media.media is not None and media.media.mime_type == "image/jpeg"
    assert media.media.url and media.media.url.startswith("https://api.twilio.com/")
    assert media.text == "our invoice"
    assert place.type is MessageType.LOCATION
    assert place.location is not None and place.location.latitude == pytest.approx(37.7793)
    assert button.choice is not None and button.choice.id == "talk_to_agent"
    assert button.text == "Talk to an agent"
    assert button.context_message_id == fixture("inbound_button")["OriginalRepliedMessageSid"]
    assert ad.ad_referral is not None and ad.ad_referral.ctwa_clid == "ARAkLkA8rmlFeiCktEJQ"
    assert ad.timestamp.timestamp() == 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("queued", DeliveryStatus.QUEUED),
        ("delivered", DeliveryStatus.DELIVERED),
        ("read", DeliveryStatus.READ),
        ("undelivered", DeliveryStatus.FAILED),
        ("some_future_state", DeliveryStatus.UNKNOWN),
    ],
)
def test_given_twilio_status_when_parsed_then_mapped_and_unknown_kept(
    raw: str, expected: DeliveryStatus
) -> None:
    params = {**fixture("status_sent"), "MessageStatus": raw}

    update = parse_twilio_status({"status": params, "received_at": 1749416400})

    assert update.status is expected
    assert update.raw_status == raw
    assert update.phone_number_id == OUR_NUMBER
    assert update.recipient_id == "14155550123"


def test_given_twilio_message_when_handled_as_meta_ones_are_then_same_contact_and_message(
    engine: Engine, twilio_account: int
) -> None:
    # The processor's message path, fed a Twilio event: the domain type is the same.
    from datetime import UTC, datetime

    from wacrm.store.schema import contacts, messages
    from wacrm.workers.inbound import handle_message

    payload: dict[str, Any] = {"message": fixture("inbound_text"), "received_at": 1749416383}
    message = parse_twilio_message(payload)

    with engine.begin() as conn:
        outcome = handle_message(
            conn,
            account_id=twilio_account,
            message=message,
            raw=payload["message"],
            now=datetime(2026, 11, 25, tzinfo=UTC),
        )

    assert outcome.message_id is not None
    [contact] = rows(engine, contacts)
    assert (contact.phone, contact.name) == ("+14155550123", "Kerry Fisher")
    [stored] = rows(engine, messages)
    assert (stored.provider, stored.provider_message_id, stored.text) == (
        "twilio",
        fixture("inbound_text")["MessageSid"],
        "Hi, what is the price?",
    )
