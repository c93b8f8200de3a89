"""Cloud API inbound: every update family in ``fixtures/whatsapp/`` splits and parses into the
frozen domain types, and values Meta adds later parse as "unknown", never as a crash."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wacrm.model import DeliveryStatus, InboundMessage, MessageType, StatusUpdate
from wacrm.whatsapp.meta_webhook import (
    WebhookEvent,
    parse_error,
    parse_message,
    parse_status,
    sign,
    split_envelope,
    verify_signature,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "whatsapp"
META_FAMILIES = sorted(p.stem for p in FIXTURES.glob("*.json") if p.stem != "twilio")
BSUID = "US.13491208655302741918"
CITY_HALL = "1 Dr Carlton B Goodlett Pl, San Francisco"
NUMBER_CHANGE = "Kerry Fisher changed from +1 650-555-1234 to +1 650-555-9999"
INTERACTIVE = MessageType.INTERACTIVE


def family(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads((FIXTURES / f"{name}.json").read_bytes())
    return doc


def scenario(name: str, key: str) -> list[WebhookEvent]:
    return list(split_envelope(family(name)[key]))


def one_message(name: str, key: str) -> InboundMessage:
    [event] = scenario(name, key)
    assert event.kind == "message"
    return parse_message(event.payload)


def one_status(key: str) -> StatusUpdate:
    [event] = scenario("message_status", key)
    return parse_status(event.payload)


ALL_SCENARIOS = [(f, s) for f in META_FAMILIES for s in family(f)]


def test_given_fixture_dir_then_one_file_per_update_family() -> None:
    assert set(META_FAMILIES) >= {
        "message", "callback_button", "callback_selection", "flow_completion", "system",
        "chat_opened", "message_status", "errors", "batched", "field_updates",
    }  # fmt: skip


@pytest.mark.parametrize(("name", "key"), ALL_SCENARIOS)
def test_given_every_fixture_scenario_when_split_and_parsed_then_frozen_events(
    name: str, key: str
) -> None:
    events = scenario(name, key)

    assert events, "every scenario holds at least one event"
    for event in events:
        assert event.event_id, f"{event.kind} without an id"
        if event.kind == "message":
            parsed: Any = parse_message(event.payload)
        elif event.kind == "status":
            parsed = parse_status(event.payload)
        elif event.kind == "error":
            parsed = parse_error(event.payload["error"])
        else:
            assert event.kind.startswith("field:")
            continue
        assert dataclasses.is_dataclass(parsed)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(parsed, dataclasses.fields(parsed)[0].name, "changed")


@pytest.mark.parametrize(
    ("name", "key", "mtype", "text"),
    [
        ("message", "text", MessageType.TEXT, "Hi, what is the price?"),
        ("message", "image", MessageType.IMAGE, "our invoice"),
        ("message", "document", MessageType.DOCUMENT, "contract"),
        ("message", "video", MessageType.VIDEO, None),
        ("message", "audio_voice", MessageType.AUDIO, None),
        ("message", "sticker", MessageType.STICKER, None),
        ("message", "location", MessageType.LOCATION, f"City Hall, {CITY_HALL}"),
        ("message", "contacts", MessageType.CONTACTS, None),
        ("message", "reaction", MessageType.REACTION, "\U0001f44d"),
        ("message", "order", MessageType.ORDER, "please deliver tomorrow"),
        ("message", "unsupported", MessageType.UNSUPPORTED, None),
        ("message", "type_added_later", MessageType.UNKNOWN, None),
        ("callback_button", "interactive_button_reply", INTERACTIVE, "Talk to an agent"),
        ("callback_button", "template_quick_reply", MessageType.BUTTON, "Stop promotions"),
        ("callback_selection", "interactive_list_reply", INTERACTIVE, "Business"),
        ("flow_completion", "interactive_nfm_reply", INTERACTIVE, "Sent"),
        ("system", "user_changed_number", MessageType.SYSTEM, NUMBER_CHANGE),
        ("chat_opened", "request_welcome", MessageType.REQUEST_WELCOME, None),
    ],
)  # fmt: skip
def test_given_message_type_when_parsed_then_type_and_rule_text(
    name: str, key: str, mtype: MessageType, text: str | None
) -> None:
    message = one_message(name, key)

    assert message.type is mtype
    assert message.text == text
    assert message.provider == "meta"
    assert message.phone_number_id == "106540352242922"


def test_given_media_types_when_parsed_then_media_ref_with_id_and_hash() -> None:
    for key in ("image", "document", "video", "audio_voice", "sticker"):
        media = one_message("message", key).media
        assert media is not None and media.id and media.sha256 and media.mime_type, key
    document = one_message("message", "document").media
    assert document is not None and document.filename == "contract.pdf"


def test_given_typed_parts_when_parsed_then_each_part_has_its_fields() -> None:
    contacts = one_message("message", "contacts").shared_contacts
    order = one_message("message", "order").order
    removed = one_message("message", "reaction_removed")
    choice = one_message("callback_selection", "interactive_list_reply").choice
    flow = one_message("flow_completion", "interactive_nfm_reply").choice
    later = one_message("flow_completion", "interactive_type_added_later").choice

    assert contacts[0].formatted_name == "Ana Lima"
    assert (contacts[0].wa_ids, contacts[0].emails) == (("447700900123",), ("ana@example.com",))
    assert order is not None and [i.quantity for i in order.items] == [2, 1]
    assert order.items[1].item_price == 29.0  # numbers sent as strings are accepted
    assert removed.reaction is not None and removed.reaction.emoji is None
    assert choice is not None and (choice.id, choice.description) == (
        "plan_business",
        "29 USD / month",
    )
    assert flow is not None and flow.response_json and "flow_token" in flow.response_json
    assert later is not None and (later.kind, later.id) == ("carousel_reply", "card_2")


def test_given_reply_forward_and_product_context_when_parsed_then_context_kept() -> None:
    reply = one_message("message", "text_reply_with_context")
    forwarded = one_message("message", "text_forwarded").context
    product = one_message("message", "text_product_enquiry").context

    assert reply.context is not None and reply.context.from_id == "15550783881"
    assert reply.context_message_id == reply.context.message_id
    assert forwarded is not None and forwarded.frequently_forwarded and forwarded.message_id is None
    assert product is not None and product.referred_product_id == "sku-2381"


def test_given_click_to_whatsapp_ad_when_parsed_then_referral_with_click_id() -> None:
    message = one_message("message", "text_from_ctwa_ad")

    assert message.ad_referral is not None
    assert message.ad_referral.source_type == "ad"
    assert message.ad_referral.ctwa_clid and message.ad_referral.ctwa_clid.startswith("ARAk")
    assert message.referral is not None and message.referral["headline"] == "Spring sale"


def test_given_bsuid_and_username_user_when_parsed_then_user_id_kept_phone_absent() -> None:
    with_id = one_message("message", "text")
    pre_bsuid = one_message("message", "text_pre_bsuid_no_user_id")
    username = one_message("message", "text_username_user_phone_withheld")

    assert (with_id.from_wa_id, with_id.from_user_id) == ("16505551234", BSUID)
    assert (pre_bsuid.from_wa_id, pre_bsuid.from_user_id) == ("16505551234", None)
    assert (username.from_wa_id, username.from_user_id) == (None, BSUID)
    assert username.profile_name == "kerry.f"  # its contact found by user id, not by phone


def test_given_system_messages_without_contacts_when_parsed_then_change_recorded() -> None:
    number = one_message("system", "user_changed_number")
    user_id = one_message("system", "user_changed_user_id")

    assert number.system is not None and number.system.new_wa_id == "16505559999"
    assert number.profile_name is None
    assert user_id.system is not None
    assert (user_id.system.type, user_id.system.new_user_id) == (
        "user_changed_user_id",
        "US.99887766554433221100",
    )
    assert user_id.from_user_id == BSUID


def test_given_unsupported_message_when_parsed_then_error_code_kept() -> None:
    message = one_message("message", "unsupported")

    assert [e.code for e in message.error_details] == [131051]
    assert message.errors[0]["title"] == "Message type unknown"


# --- statuses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "status", "raw"),
    [
        ("sent", DeliveryStatus.SENT, "sent"),
        ("delivered", DeliveryStatus.DELIVERED, "delivered"),
        ("read", DeliveryStatus.READ, "read"),
        ("played_voice", DeliveryStatus.PLAYED, "played"),
        ("failed_outside_window", DeliveryStatus.FAILED, "failed"),
        ("status_added_later", DeliveryStatus.UNKNOWN, "deleted"),
        ("without_contacts_or_pricing", DeliveryStatus.SENT, "sent"),
    ],
)
def test_given_status_when_parsed_then_mapped_and_raw_kept(
    key: str, status: DeliveryStatus, raw: str
) -> None:
    update = one_status(key)

    assert (update.status, update.raw_status) == (status, raw)


def test_given_failed_statuses_when_parsed_then_error_codes_and_details_kept() -> None:
    window = one_status("failed_outside_window")
    pair = one_status("failed_pair_rate")
    sent = one_status("sent")

    assert [e.code for e in window.error_details] == [131047]
    assert window.error_details[0].details and "24 hours" in window.error_details[0].details
    assert window.errors[0]["code"] == 131047  # the raw element, as the processor reads it
    assert [e.code for e in pair.error_details] == [131056]
    assert (sent.recipient_user_id, sent.biz_opaque_callback_data) == (BSUID, "ticket:42")
    assert one_status("delivered").conversation_id == "8e3f0d3f1c2b4a5e9d7c6b5a4f3e2d1c"


# --- envelopes -------------------------------------------------------------------------------


def test_given_batched_envelope_when_split_then_every_element_with_its_own_contact() -> None:
    events = scenario("batched", "many_entries_changes_messages_statuses")

    assert [e.kind for e in events] == ["message", "message", "status", "status", "status"]
    names = [parse_message(e.payload).profile_name for e in events[:2]]
    assert names == ["Kerry Fisher", "Ana Lima"]
    assert len({e.event_id for e in events}) == 5


def test_given_value_errors_and_field_updates_when_split_then_kept_with_codes() -> None:
    [error] = scenario("errors", "value_errors")
    [quality] = scenario("field_updates", "phone_number_quality_update")

    assert error.kind == "error" and parse_error(error.payload["error"]).code == 131052
    assert quality.kind == "field:phone_number_quality_update"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    mtype=st.sampled_from([t.value for t in MessageType] + ["brand_new"]),
    body=json_values,
    extra=st.dictionaries(
        st.sampled_from(["context", "referral", "errors", "from", "timestamp", "contacts"]),
        json_values,
    ),
)
def test_given_any_json_shape_in_a_message_when_parsed_then_never_crashes(
    mtype: str, body: Any, extra: dict[str, Any]
) -> None:
    msg = {"id": "wamid.fuzz", "type": mtype, mtype: body, **extra}

    parsed = parse_message({"message": msg, "contact": body, "metadata": body})

    assert parsed.provider_message_id == "wamid.fuzz"
    assert parsed.raw_type == mtype


# --- signature -------------------------------------------------------------------------------


def test_given_raw_bytes_with_escaped_non_ascii_when_verified_then_only_exact_bytes_pass() -> None:
    raw = b'{"text":{"body":"Ol\\u00e1"}}'
    header = sign(raw, "s3cret")

    assert verify_signature(raw, header, "s3cret")
    assert not verify_signature('{"text":{"body":"Olá"}}'.encode(), header, "s3cret")
    assert not verify_signature(raw, header, "")  # fail closed without a secret
    assert not verify_signature(raw, header.replace("sha256=", "sha1="), "s3cret")
