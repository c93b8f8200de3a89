"""Cloud-API-shaped bodies → Twilio ``Messages.json`` fields, and the Content SID setting."""

from __future__ import annotations

from typing import Any

import pytest

from wacrm.config import ConfigError
from wacrm.whatsapp.meta_bodies import (
    ReplyButton,
    body_parameters,
    buttons_message,
    location_message,
    media_message,
    template_message,
    text_message,
)
from wacrm.whatsapp.twilio_bodies import (
    NotSendable,
    TwilioRequest,
    parse_content_sids,
    twilio_request,
)

TO = "+16505551234"
HELLO = "HX" + "1" * 32
HELLO_PT = "HX" + "2" * 32
SIDS = {("hello", None): HELLO, ("hello", "pt_BR"): HELLO_PT}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (text_message(TO, "Hi", reply_to="wamid.X"), TwilioRequest(TO, body="Hi")),
        (media_message(TO, "image", link="https://c.test/a.png", caption="Look"),
         TwilioRequest(TO, body="Look", media_url="https://c.test/a.png")),
        (media_message(TO, "document", link="https://c.test/i.pdf", filename="i.pdf"),
         TwilioRequest(TO, media_url="https://c.test/i.pdf")),
        (media_message(TO, "video", link="https://c.test/v.mp4", caption="Clip"),
         TwilioRequest(TO, body="Clip", media_url="https://c.test/v.mp4")),
        (media_message(TO, "audio", link="https://c.test/a.ogg"),
         TwilioRequest(TO, media_url="https://c.test/a.ogg")),
        (template_message(TO, "hello", "en_US", body_parameters("Ana", "3")),
         TwilioRequest(TO, content_sid=HELLO, content_variables={"1": "Ana", "2": "3"})),
        (template_message(TO, "hello", "pt_BR"), TwilioRequest(TO, content_sid=HELLO_PT)),
    ],
    ids=["text", "image", "document", "video", "audio", "template-any-lang", "template-lang"],
)  # fmt: skip
def test_given_cloud_api_body_when_translated_then_twilio_fields(
    body: dict[str, Any], expected: TwilioRequest
) -> None:
    assert twilio_request(body, SIDS) == expected


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (location_message(TO, 1.0, 2.0), "twilio_unsupported", "location"),
        (buttons_message(TO, "Pick", [ReplyButton("a", "A")]), "twilio_unsupported",
         "interactive"),
        (media_message(TO, "sticker", link="https://c.test/s.webp"), "twilio_unsupported",
         "sticker"),
        (media_message(TO, "image", media_id="42"), "twilio_unsupported", "public URL"),
        (template_message(TO, "bye", "en_US"), "twilio_no_content_sid",
         "bye/en_US=HX… (or bye=HX…) to WACRM_TWILIO_CONTENT_SIDS"),
        (template_message(TO, "hello", "en_US",
                          [{"type": "header", "parameters": [{"type": "text", "text": "x"}]}]),
         "twilio_unsupported", "header parameters"),
        (template_message(TO, "hello", "en_US",
                          [{"type": "body", "parameters": [{"type": "currency"}]}]),
         "twilio_unsupported", "not currency"),
    ],
    ids=["location", "interactive", "sticker", "media-id", "no-sid", "header-param",
         "currency-param"],
)  # fmt: skip
def test_given_body_twilio_cannot_take_when_translated_then_not_sendable_with_reason(
    body: dict[str, Any], code: str, words: str
) -> None:
    with pytest.raises(NotSendable) as caught:
        twilio_request(body, SIDS)

    assert caught.value.code == code
    assert words in caught.value.reason


def test_given_content_sid_setting_when_parsed_then_names_and_languages_mapped() -> None:
    raw = f" hello={HELLO}, hello/pt_BR = {HELLO_PT},, "

    assert parse_content_sids(raw) == SIDS
    assert parse_content_sids("") == {}


@pytest.mark.parametrize("raw", ["hello", "hello=HX12", "=HX" + "1" * 32, "a=SM" + "1" * 32])
def test_given_malformed_content_sid_setting_when_parsed_then_config_error_names_it(
    raw: str,
) -> None:
    with pytest.raises(ConfigError, match="WACRM_TWILIO_CONTENT_SIDS"):
        parse_content_sids(raw)


# Twilio takes at most 1,600 characters in Body and in each ContentVariables value:
# twilio.com/docs/api/errors/21617, twilio.com/docs/api/errors/21658.
@pytest.mark.parametrize(
    ("body", "code", "title", "words"),
    [
        (text_message(TO, "x" * 1601), "21617", "Body over 1,600 characters",
         "text.body is 1601 characters; Twilio's limit for Body is 1600 (1 over, from line 1, "
         "column 1601)"),
        (text_message(TO, "line one\n" + "y" * 4000), "21617", "Body over 1,600 characters",
         "text.body is 4009 characters; Twilio's limit for Body is 1600 (2409 over, from line "
         "2, column 1592)"),
        ({**media_message(TO, "image", link="https://c.test/a.png"),  # past Meta's 1024 too
          "image": {"link": "https://c.test/a.png", "caption": "c" * 1700}}, "21617",
         "Body over 1,600 characters", "image.caption is 1700 characters"),
        (template_message(TO, "hello", "en_US", body_parameters("Ana", "v" * 1601)), "21658",
         "Parameter over its character limit",
         "template hello body parameter 2 is 1601 characters; Twilio's limit for the "
         'ContentVariables value "2" is 1600'),
    ],
    ids=["text-1601", "text-4009-multiline", "caption", "template-variable"],
)  # fmt: skip
def test_given_body_over_twilio_limit_when_translated_then_not_sendable_with_twilio_code(
    body: dict[str, Any], code: str, title: str, words: str
) -> None:
    with pytest.raises(NotSendable) as caught:
        twilio_request(body, SIDS)

    assert (caught.value.code, caught.value.title) == (code, title)
    assert words in caught.value.reason
    assert f"Twilio would refuse it with {code}" in caught.value.reason


def test_given_body_and_variable_at_exactly_1600_when_translated_then_sent_as_is() -> None:
    text = "é" * 1600
    template = template_message(TO, "hello", "en_US", body_parameters(text))

    assert twilio_request(text_message(TO, text), SIDS) == TwilioRequest(TO, body=text)
    assert twilio_request(template, SIDS).content_variables == {"1": text}
