"""Sending through Twilio's Messages.json: request shape, and failures classified."""

from __future__ import annotations

from urllib.parse import parse_qs

import httpx
import orjson
import pytest

from wacrm.config import Secret, Settings
from wacrm.whatsapp.twilio_send import TwilioSender, TwilioSendError, whatsapp_address

SID = "AC" + "0" * 30 + "01"
TOKEN = "twilio-send-token"
BASE = "https://twilio.test"


def sender_answering(status: int, body: object, seen: list[httpx.Request]) -> TwilioSender:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    settings = Settings(
        twilio_account_sid=SID, twilio_auth_token=Secret(TOKEN), twilio_api_base_url=BASE
    )
    return TwilioSender.from_settings(client, settings)


async def test_given_text_when_sent_then_form_post_with_basic_auth_and_sid_returned() -> None:
    seen: list[httpx.Request] = []
    sender = sender_answering(201, {"sid": "SM" + "1" * 32, "status": "queued"}, seen)

    accepted = await sender.send(
        from_="+14155238886",
        to="14155550123",
        body="Our price list: ...",
        status_callback="https://hooks.example.com/webhooks/twilio",
    )

    assert (accepted.sid, accepted.status) == ("SM" + "1" * 32, "queued")
    [request] = seen
    assert str(request.url) == f"{BASE}/2010-04-01/Accounts/{SID}/Messages.json"
    assert request.headers["authorization"] == httpx.BasicAuth(SID, TOKEN)._auth_header
    form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
    assert form == {
        "From": "whatsapp:+14155238886",
        "To": "whatsapp:+14155550123",
        "Body": "Our price list: ...",
        "StatusCallback": "https://hooks.example.com/webhooks/twilio",
    }


async def test_given_template_when_sent_then_content_sid_and_json_variables() -> None:
    seen: list[httpx.Request] = []
    sender = sender_answering(201, {"sid": "SM" + "2" * 32, "status": "accepted"}, seen)

    await sender.send(
        from_="whatsapp:+14155238886",
        to="+14155550123",
        content_sid="HX" + "3" * 32,
        content_variables={"1": "Kerry"},
    )

    form = {k: v[0] for k, v in parse_qs(seen[0].content.decode()).items()}
    assert form["ContentSid"] == "HX" + "3" * 32
    assert orjson.loads(form["ContentVariables"]) == {"1": "Kerry"}
    assert "Body" not in form


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable"),
    [
        (429, {"code": 20429, "message": "Too Many Requests"}, 20429, True),
        (503, {"message": "Service Unavailable"}, None, True),
        (400, {"code": 21211, "message": "The 'To' number is not a valid phone number."}, 21211,
         False),
        (401, {"code": 20003, "message": "Authenticate"}, 20003, False),
    ],
)  # fmt: skip
async def test_given_refusal_when_sent_then_classified_without_the_token(
    status: int, body: dict[str, object], code: int | None, retryable: bool
) -> None:
    sender = sender_answering(status, body, [])

    with pytest.raises(TwilioSendError) as caught:
        await sender.send(from_="+14155238886", to="+14155550123", body="hi")

    assert (caught.value.http_status, caught.value.code) == (status, code)
    assert caught.value.retryable is retryable
    assert TOKEN not in str(caught.value)


async def test_given_nothing_to_send_when_sent_then_value_error_and_no_request() -> None:
    seen: list[httpx.Request] = []
    sender = sender_answering(201, {}, seen)

    with pytest.raises(ValueError, match="body, a media URL or a ContentSid"):
        await sender.send(from_="+14155238886", to="+14155550123")

    assert seen == []


def test_given_numbers_in_any_form_when_addressed_then_whatsapp_prefixed_e164() -> None:
    assert whatsapp_address("14155550123") == "whatsapp:+14155550123"
    assert whatsapp_address("+14155550123") == "whatsapp:+14155550123"
    assert whatsapp_address("whatsapp:+14155550123") == "whatsapp:+14155550123"
