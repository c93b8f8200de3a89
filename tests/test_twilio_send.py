"""Sending through Twilio's Messages.json: request shape (sync and async clients), and
failures classified by Twilio's error code without ever showing the token."""

from __future__ import annotations

from urllib.parse import parse_qs

import httpx
import orjson
import pytest

from wacrm.config import Secret, Settings
from wacrm.whatsapp.errors import SendAction
from wacrm.whatsapp.twilio_send import TwilioSender, TwilioSendError, whatsapp_address

SID = "AC" + "0" * 30 + "01"
TOKEN = "twilio-send-token"
BASE = "https://twilio.test"
SETTINGS = Settings(
    twilio_account_sid=SID, twilio_auth_token=Secret(TOKEN), twilio_api_base_url=BASE
)


def answering(status: int, body: object, seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handler)


def sync_sender(status: int, body: object, seen: list[httpx.Request]) -> TwilioSender:
    return TwilioSender.from_settings(
        httpx.Client(transport=answering(status, body, seen)), SETTINGS
    )


def form_of(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


def test_given_text_when_sent_then_form_post_with_basic_auth_and_sid_returned() -> None:
    seen: list[httpx.Request] = []
    sender = sync_sender(201, {"sid": "SM" + "1" * 32, "status": "queued"}, seen)

    accepted = sender.send(
        from_="+14155238886",
        to="14155550123",
        body="Our price list: ...",
        status_callback="https://hooks.example.com/webhooks/twilio",
    )

    assert (accepted.sid, accepted.status) == ("SM" + "1" * 32, "queued")
    [request] = seen
    assert str(request.url) == f"{BASE}/2010-04-01/Accounts/{SID}/Messages.json"
    assert request.headers["authorization"] == httpx.BasicAuth(SID, TOKEN)._auth_header
    assert form_of(request) == {
        "From": "whatsapp:+14155238886",
        "To": "whatsapp:+14155550123",
        "Body": "Our price list: ...",
        "StatusCallback": "https://hooks.example.com/webhooks/twilio",
    }


async def test_given_async_client_when_asend_then_same_form_and_sid() -> None:
    seen: list[httpx.Request] = []
    transport = answering(201, {"sid": "SM" + "4" * 32, "status": "queued"}, seen)
    async with httpx.AsyncClient(transport=transport) as client:
        sender = TwilioSender.from_settings(client, SETTINGS)

        accepted = await sender.asend(
            from_="+14155238886", to="+14155550123", media_url="https://x.test/a.jpg"
        )

    assert accepted.sid == "SM" + "4" * 32
    assert form_of(seen[0]) == {
        "From": "whatsapp:+14155238886",
        "To": "whatsapp:+14155550123",
        "MediaUrl": "https://x.test/a.jpg",
    }


def test_given_wrong_client_kind_when_sending_then_type_error_names_the_other_call() -> None:
    sender = TwilioSender.from_settings(httpx.AsyncClient(), SETTINGS)

    with pytest.raises(TypeError, match="asend"):
        sender.send(from_="+14155238886", to="+14155550123", body="hi")


def test_given_template_when_sent_then_content_sid_and_json_variables() -> None:
    seen: list[httpx.Request] = []
    sender = sync_sender(201, {"sid": "SM" + "2" * 32, "status": "accepted"}, seen)

    sender.send(
        from_="whatsapp:+14155238886",
        to="+14155550123",
        content_sid="HX" + "3" * 32,
        content_variables={"1": "Kerry"},
    )

    form = form_of(seen[0])
    assert form["ContentSid"] == "HX" + "3" * 32
    assert orjson.loads(form["ContentVariables"]) == {"1": "Kerry"}
    assert "Body" not in form


@pytest.mark.parametrize(
    ("status", "body", "code", "action", "title"),
    [
        (429, {"code": 20429, "message": "Too Many Requests"}, 20429, SendAction.RETRY_BACKOFF,
         "Too many requests"),
        (503, {"message": "Service Unavailable"}, None, SendAction.RETRY_BACKOFF,
         "Service Unavailable"),
        (400, {"code": 21211, "message": "The 'To' number is not a valid phone number."}, 21211,
         SendAction.NEVER_RETRY_FLAG_CONTACT, "Invalid 'To' address"),
        (401, {"code": 20003, "message": "Authenticate"}, 20003, SendAction.REFRESH_CREDENTIALS,
         "Permission denied"),
        # twilio.com/docs/api/errors/21617 and /21658: a Body or a ContentVariables value over
        # 1,600 characters; known codes, so titled from the table (an unknown 4xx is titled
        # with Twilio's message instead).
        (400, {"code": 21617, "message": "The concatenated message body exceeds the 1600 "
                                         "character limit"}, 21617, SendAction.FIX_REQUEST,
         "Body over 1,600 characters"),
        (400, {"code": 21658, "message": "Parameter exceeded character limit"}, 21658,
         SendAction.FIX_REQUEST, "Parameter over its character limit"),
        (400, {"code": 99999, "message": "Something new"}, 99999, SendAction.FIX_REQUEST,
         "Something new"),
        (401, {"message": "Unauthorized"}, None, SendAction.REFRESH_CREDENTIALS, "Unauthorized"),
    ],
    ids=["20429", "503", "21211", "20003", "21617", "21658", "unknown-4xx", "401"],
)  # fmt: skip
def test_given_refusal_when_sent_then_classified_without_the_token(
    status: int, body: dict[str, object], code: int | None, action: SendAction, title: str
) -> None:
    sender = sync_sender(status, body, [])

    with pytest.raises(TwilioSendError) as caught:
        sender.send(from_="+14155238886", to="+14155550123", body="hi")

    assert (caught.value.http_status, caught.value.code, caught.value.action) == (
        status,
        code,
        action,
    )
    assert caught.value.title == title
    assert caught.value.retryable is (action is SendAction.RETRY_BACKOFF)
    assert TOKEN not in str(caught.value) + repr(caught.value) + caught.value.summary
    assert TOKEN not in repr(sender)


def test_given_429_with_retry_after_when_sent_then_delay_carried() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"code": 20429}, headers={"Retry-After": "7"})

    sender = TwilioSender.from_settings(
        httpx.Client(transport=httpx.MockTransport(handler)), SETTINGS
    )

    with pytest.raises(TwilioSendError) as caught:
        sender.send(from_="+14155238886", to="+14155550123", body="hi")

    assert caught.value.retry_after == 7.0


def test_given_timeout_when_sent_then_retryable_error_without_http_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    sender = TwilioSender.from_settings(
        httpx.Client(transport=httpx.MockTransport(handler)), SETTINGS
    )

    with pytest.raises(TwilioSendError) as caught:
        sender.send(from_="+14155238886", to="+14155550123", body="hi")

    assert caught.value.http_status is None and caught.value.retryable
    assert "ReadTimeout" in caught.value.summary


def test_given_nothing_to_send_when_sent_then_value_error_and_no_request() -> None:
    seen: list[httpx.Request] = []
    sender = sync_sender(201, {}, seen)

    with pytest.raises(ValueError, match="body, a media URL or a ContentSid"):
        sender.send(from_="+14155238886", to="+14155550123")

    assert seen == []


def test_given_numbers_in_any_form_when_addressed_then_whatsapp_prefixed_e164() -> None:
    assert whatsapp_address("14155550123") == "whatsapp:+14155550123"
    assert whatsapp_address("+14155550123") == "whatsapp:+14155550123"
    assert whatsapp_address("whatsapp:+14155550123") == "whatsapp:+14155550123"
