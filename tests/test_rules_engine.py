"""The pure engine: which rules an event sets off, in order, and what each plans."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from wacrm.model import MessageType, Priority
from wacrm.rules.engine import RuleEngine
from wacrm.rules.events import (
    ContactView,
    FieldChangeEvent,
    MessageEvent,
    NoReplyEvent,
    StatusEvent,
)
from wacrm.rules.loader import load_rules, load_ruleset
from wacrm.rules.plans import (
    EventEmit,
    PriorityChange,
    ReplySend,
    Skipped,
    TagsChange,
    TaskCreate,
)

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # Monday
PRICE_LIST = "Starter 9.99 USD/month"
ENGINE = RuleEngine(load_ruleset(), {"price_list": PRICE_LIST})
CONTACT = ContactView(id=7, phone="+966501234567", name="Layla Hassan", last_inbound_at=NOW)


def _message(text: str, type: MessageType = MessageType.TEXT) -> MessageEvent:
    return MessageEvent("wamid.1", type, text, NOW, row_id=11)


def _engine(tmp_path: Path, body: str) -> RuleEngine:
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nrules:\n" + body, encoding="utf-8")
    return RuleEngine(load_rules([path]), {"price_list": PRICE_LIST})


@pytest.mark.parametrize(
    "text",
    [
        "السعر؟",
        "price",
        "What's the PRICE?",
        "¿precio?",
        "价格多少",
        # Carried over from the minimal auto-reply's tests, which this engine replaced.
        "price?",
        "What is the PRICE of the starter plan",
        "Prices please",
        "كم سعر الاشتراك",
        "ما هي الأسعار",
        "¿Cuál es el precio?",
        "quel est le prix",
        "Qual o preço?",
        "QUAL O PRECO",  # typed without the cedilla
        "Ｐｒｉｃｅ",  # full-width letters, as some keyboards send them
    ],
)
def test_given_price_question_when_evaluated_then_price_list_reply_and_tag(text: str) -> None:
    planned = ENGINE.evaluate(_message(text), CONTACT, NOW)

    assert [p.rule for p in planned] == ["price-list", "price-list"]
    reply, tags = planned[0].effect, planned[1].effect
    assert isinstance(reply, ReplySend)
    assert reply.content == {"type": "text", "text": {"body": PRICE_LIST, "preview_url": False}}
    assert tags == TagsChange(add=("price-enquiry",))
    assert planned[0].firing_key == "msg:wamid.1"
    assert planned[0].message_row_id == 11


def test_given_price_question_as_audio_when_evaluated_then_type_filter_stops_it() -> None:
    assert ENGINE.evaluate(_message("price", MessageType.AUDIO), CONTACT, NOW) == []


def test_given_handover_request_when_evaluated_then_stop_keeps_price_rule_out() -> None:
    planned = ENGINE.evaluate(_message("price? I want a human"), CONTACT, NOW)

    assert {p.rule for p in planned} == {"human-handover"}
    effects = [p.effect for p in planned]
    assert TagsChange(add=("handover",)) in effects
    assert PriorityChange(Priority.HIGH) in effects
    assert any(isinstance(e, EventEmit) and e.name == "handover" for e in effects)


def test_given_contact_in_handover_when_price_asked_then_no_bot_reply() -> None:
    contact = replace(CONTACT, tags=frozenset({"handover"}))

    assert ENGINE.evaluate(_message("price"), contact, NOW) == []


def test_given_contact_language_when_handover_reply_then_text_in_that_language() -> None:
    contact = replace(CONTACT, language="ar")

    planned = ENGINE.evaluate(_message("ابي اكلم موظف"), contact, NOW)

    (reply,) = [p.effect for p in planned if isinstance(p.effect, ReplySend)]
    assert reply.language == "ar"
    assert reply.text == "شكرًا لك، سيرد عليك أحد موظفينا هنا قريبًا."


def test_given_unread_reaches_five_when_evaluated_then_priority_high_keyed_per_episode() -> None:
    below = replace(CONTACT, unread_count=4, awaiting_since_id=3)
    at = replace(CONTACT, unread_count=5, awaiting_since_id=3)

    assert [p.rule for p in ENGINE.evaluate(_message("hi"), below, NOW)] == []
    (planned,) = ENGINE.evaluate(_message("hi"), at, NOW)
    assert planned.effect == PriorityChange(Priority.HIGH)
    assert planned.firing_key == "unread:7:3"


def test_given_order_status_change_when_evaluated_then_template_in_contact_language() -> None:
    contact = replace(CONTACT, language="pt", order_status_code="SHIPPED", last_inbound_at=None)
    event = FieldChangeEvent("order_status_code", "PAID", "SHIPPED", NOW, change_id="c-1")

    planned = ENGINE.evaluate(event, contact, NOW)

    reply = planned[0].effect
    assert isinstance(reply, ReplySend) and reply.kind == "template"
    assert reply.content["template"] == {
        "name": "order_status_update",
        "language": {"code": "pt_BR"},
        "components": [
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "text": "Layla"},
                    {"type": "text", "text": "SHIPPED"},
                ],
            }
        ],
    }
    assert planned[0].firing_key == "change:7:order_status_code:c-1"
    assert planned[1].effect == EventEmit(
        "order.status_changed",
        {
            "trigger": "FieldChangeEvent",
            "field": "order_status_code",
            "old": "PAID",
            "new": "SHIPPED",
        },
    )


def test_given_unlisted_language_when_template_chosen_then_fallback_code() -> None:
    contact = replace(CONTACT, language="tr", order_status_code="X")
    event = FieldChangeEvent("order_status_code", None, "X", NOW)

    reply = ENGINE.evaluate(event, contact, NOW)[0].effect

    assert isinstance(reply, ReplySend)
    assert reply.content["template"]["language"] == {"code": "en_US"}


def test_given_text_only_reply_outside_window_when_evaluated_then_skipped_with_reason(
    tmp_path: Path,
) -> None:
    engine = _engine(
        tmp_path,
        "  - name: a\n    when: {field_changed: {field: priority}}\n"
        "    then: [{reply: {text: hello}}]\n",
    )
    stale = replace(CONTACT, last_inbound_at=NOW - timedelta(hours=25))
    event = FieldChangeEvent("priority", "low", "high", NOW)

    (planned,) = engine.evaluate(event, stale, NOW)

    assert planned.effect == Skipped(
        "reply", "outside the 24 h window, and the rule has no template"
    )


def test_given_text_and_template_inside_window_when_evaluated_then_text_with_fallback(
    tmp_path: Path,
) -> None:
    engine = _engine(
        tmp_path,
        "  - name: a\n    when: {field_changed: {field: priority}}\n"
        "    then: [{reply: {text: hello, template: {name: t, fallback: en}}}]\n",
    )
    event = FieldChangeEvent("priority", "low", "high", NOW)

    (planned,) = engine.evaluate(event, CONTACT, NOW)

    assert isinstance(planned.effect, ReplySend)
    assert planned.effect.kind == "text"
    assert planned.effect.fallback == {
        "type": "template",
        "template": {"name": "t", "language": {"code": "en"}},
    }


def test_given_failed_status_when_evaluated_then_tag_and_task_with_error() -> None:
    event = StatusEvent("wamid.9", True, NOW, "131026", "Message undeliverable", row_id=9)

    planned = ENGINE.evaluate(event, CONTACT, NOW)

    assert [p.rule for p in planned] == ["delivery-failed", "delivery-failed"]
    assert planned[0].effect == TagsChange(add=("delivery-failed",))
    task = planned[1].effect
    assert isinstance(task, TaskCreate)
    assert task.subject == (
        "WhatsApp message to Layla Hassan failed: Message undeliverable (131026)"
    )
    assert task.due_at == NOW + timedelta(hours=4)
    assert planned[0].firing_key == "failed:9"


def test_given_no_reply_event_when_evaluated_then_fires_only_after_delay() -> None:
    event = NoReplyEvent(episode_message_id=3, since=NOW)

    assert ENGINE.evaluate(event, CONTACT, NOW + timedelta(hours=47, minutes=59)) == []
    planned = ENGINE.evaluate(event, CONTACT, NOW + timedelta(hours=48))
    assert {p.rule for p in planned} == {"no-reply-reminder"}
    assert planned[0].firing_key == "noreply:7:3"


def test_given_business_hours_condition_when_outside_then_rule_does_not_fire(
    tmp_path: Path,
) -> None:
    engine = _engine(
        tmp_path,
        "  - name: closed\n    when: {message_received: {}}\n"
        "    if: [{business_hours: {timezone: Asia/Riyadh, days: sun-thu, from: '09:00',"
        " to: '17:00', inside: false}}]\n"
        "    then: [{reply: {text: 'We are closed'}}]\n",
    )
    monday_noon_riyadh = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # 12:00 in Riyadh
    friday_noon_riyadh = datetime(2026, 3, 6, 9, 0, tzinfo=UTC)

    assert engine.evaluate(_message("hi"), CONTACT, monday_noon_riyadh) == []
    assert len(engine.evaluate(_message("hi"), CONTACT, friday_noon_riyadh)) == 1


def test_given_overnight_hours_when_after_midnight_then_counts_for_previous_day(
    tmp_path: Path,
) -> None:
    engine = _engine(
        tmp_path,
        "  - name: night\n    when: {message_received: {}}\n"
        "    if: [{business_hours: {timezone: UTC, days: fri, from: '22:00', to: '02:00'}}]\n"
        "    then: [{add_tags: [night]}]\n",
    )
    saturday_1am = datetime(2026, 3, 7, 1, 0, tzinfo=UTC)
    sunday_1am = datetime(2026, 3, 8, 1, 0, tzinfo=UTC)

    assert len(engine.evaluate(_message("hi"), CONTACT, saturday_1am)) == 1
    assert engine.evaluate(_message("hi"), CONTACT, sunday_1am) == []


def test_given_earlier_rule_adds_tag_when_later_rule_tests_it_then_it_sees_the_tag(
    tmp_path: Path,
) -> None:
    engine = _engine(
        tmp_path,
        "  - name: first\n    when: {message_received: {keywords: [vip]}}\n"
        "    then: [{add_tags: [vip]}]\n"
        "  - name: second\n    when: {message_received: {}}\n"
        "    if: [{contact: {field: tags, contains: VIP}}]\n"
        "    then: [{set_priority: high}]\n",
    )

    planned = engine.evaluate(_message("I am vip"), CONTACT, NOW)

    assert [p.rule for p in planned] == ["first", "second"]


@pytest.mark.parametrize(
    ("condition", "fires"),
    [
        ("{field: language, in: [ar, fa]}", True),
        ("{field: language, not_in: [ar]}", False),
        ("{field: country, equals: sa}", True),
        ("{field: order_status_code, empty: true}", True),
        ("{field: unread_count, at_least: 3}", True),
        ("{field: unread_count, at_most: 2}", False),
        ("{field: priority, not_equals: high}", True),
    ],
)
def test_given_contact_condition_when_evaluated_then_fires_as_expected(
    tmp_path: Path, condition: str, fires: bool
) -> None:
    engine = _engine(
        tmp_path,
        f"  - name: c\n    when: {{message_received: {{}}}}\n    if: [{{contact: {condition}}}]\n"
        "    then: [{add_tags: [x]}]\n",
    )
    contact = replace(CONTACT, language="ar", unread_count=3)

    assert bool(engine.evaluate(_message("hi"), contact, NOW)) is fires


def test_given_no_phone_when_reply_planned_then_skipped() -> None:
    contact = replace(CONTACT, phone=None, wa_id=None)

    planned = ENGINE.evaluate(_message("price"), contact, NOW)

    assert planned[0].effect == Skipped("reply", "the contact has no phone number to send to")


def test_given_message_opened_ticket_when_no_rule_replied_then_ticket_ack_fallback() -> None:
    event = replace(_message("hello"), opened_ticket_id=42)

    (planned,) = ENGINE.evaluate(event, CONTACT, NOW)

    assert planned.rule == "ticket-ack"
    assert isinstance(planned.effect, ReplySend)
    assert planned.effect.text == (
        "Thanks, we received your message. Ticket #42 is open and an agent will reply soon."
    )


def test_given_price_question_opened_ticket_when_evaluated_then_only_price_reply() -> None:
    event = replace(_message("price"), opened_ticket_id=42)

    planned = ENGINE.evaluate(event, CONTACT, NOW)

    assert {p.rule for p in planned} == {"price-list"}


def test_given_message_without_new_ticket_when_evaluated_then_no_ack() -> None:
    assert ENGINE.evaluate(_message("hello"), CONTACT, NOW) == []


@pytest.mark.parametrize("text", ["priceless advice", "spring", "", None, "pri ce"])
def test_given_no_whole_word_keyword_and_no_new_ticket_when_evaluated_then_nothing(
    text: str | None,
) -> None:
    assert ENGINE.evaluate(MessageEvent("wamid.1", MessageType.TEXT, text, NOW), CONTACT, NOW) == []


@pytest.mark.parametrize(
    ("mtype", "text"),
    [(MessageType.IMAGE, "price of this one?"), (MessageType.INTERACTIVE, "See prices")],
)
def test_given_keyword_in_caption_or_button_title_when_evaluated_then_price_list(
    mtype: MessageType, text: str
) -> None:
    event = replace(_message(text, mtype), opened_ticket_id=7)

    planned = ENGINE.evaluate(event, CONTACT, NOW)

    assert {p.rule for p in planned} == {"price-list"}
    assert isinstance(planned[0].effect, ReplySend)
    assert planned[0].effect.text == PRICE_LIST


def test_given_captionless_image_opening_ticket_when_evaluated_then_ack_names_the_type() -> None:
    event = MessageEvent("wamid.1", MessageType.IMAGE, None, NOW, row_id=11, opened_ticket_id=3)

    (planned,) = ENGINE.evaluate(event, replace(CONTACT, name=None), NOW)

    assert isinstance(planned.effect, ReplySend)
    assert planned.effect.text is not None
    assert planned.effect.text.startswith("Thanks, we received your image. Ticket #3 is open")


def test_given_placeholder_syntax_in_profile_name_when_rendered_then_kept_literally(
    tmp_path: Path,
) -> None:
    engine = _engine(
        tmp_path,
        "  - name: hi\n    when: {message_received: {}}\n"
        "    then: [{reply: {text: 'Hi {name}, about your {type}'}}]\n",
    )
    contact = replace(CONTACT, name="{price_list}")

    (planned,) = engine.evaluate(_message("x"), contact, NOW)

    # Substitution is one pass over the rule's text: what a customer typed is never expanded.
    assert isinstance(planned.effect, ReplySend)
    assert planned.effect.text == "Hi {price_list}, about your message"
