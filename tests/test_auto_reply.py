"""Keyword auto-replies: matching across languages, accents and message kinds; rule files."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from wacrm.model import InboundMessage, MessageType
from wacrm.rules.auto_reply import AutoReplies, Reply, RulesError

PRICE_LIST = "Starter 9.99 USD, Business 29 USD."


def inbound(
    text: str | None, mtype: MessageType = MessageType.TEXT, name: str | None = "Alice"
) -> InboundMessage:
    return InboundMessage(
        provider="meta",
        provider_message_id="wamid.1",
        phone_number_id="106540352242922",
        from_wa_id="16315551234",
        from_user_id=None,
        profile_name=name,
        timestamp=datetime(2026, 11, 25, tzinfo=UTC),
        type=mtype,
        raw_type=mtype.value,
        text=text,
    )


@pytest.fixture
def replies() -> AutoReplies:
    return AutoReplies.load(variables={"price_list": PRICE_LIST})


@pytest.mark.parametrize(
    "text",
    [
        "price?",
        "What is the PRICE of the starter plan",
        "Prices please",
        "السعر؟",
        "كم سعر الاشتراك",
        "ما هي الأسعار",
        "¿Cuál es el precio?",
        "quel est le prix",
        "Qual o preço?",
        "QUAL O PRECO",  # typed without the cedilla
        "Ｐｒｉｃｅ",  # full-width letters, as some keyboards send them
    ],
)
def test_given_price_keyword_in_any_default_language_when_matched_then_price_list(
    replies: AutoReplies, text: str
) -> None:
    assert replies.match(inbound(text), opened_ticket=False) == Reply("price", PRICE_LIST)


@pytest.mark.parametrize("text", ["priceless advice", "spring", "", None, "pri ce"])
def test_given_no_whole_word_keyword_when_matched_without_new_ticket_then_no_reply(
    replies: AutoReplies, text: str | None
) -> None:
    assert replies.match(inbound(text), opened_ticket=False) is None


def test_given_image_caption_with_keyword_when_matched_then_price_list(
    replies: AutoReplies,
) -> None:
    message = inbound("price of this one?", MessageType.IMAGE)

    assert replies.match(message, opened_ticket=True, ticket_id=7) == Reply("price", PRICE_LIST)


def test_given_button_title_with_keyword_when_matched_then_price_list(
    replies: AutoReplies,
) -> None:
    assert replies.match(inbound("See prices", MessageType.INTERACTIVE), opened_ticket=False)


def test_given_new_ticket_and_no_keyword_when_matched_then_acknowledgement_with_ticket(
    replies: AutoReplies,
) -> None:
    reply = replies.match(inbound("my order is late"), opened_ticket=True, ticket_id=42)

    assert reply == Reply(
        "ticket_ack",
        "Thanks Alice, we received your message — ticket #42 is open and an agent will reply soon.",
    )


def test_given_new_ticket_from_image_without_name_when_matched_then_ack_names_type(
    replies: AutoReplies,
) -> None:
    reply = replies.match(
        inbound(None, MessageType.IMAGE, name=None), opened_ticket=True, ticket_id=3
    )

    assert reply is not None
    assert reply.text.startswith("Thanks there, we received your image — ticket #3 is open")


def test_given_placeholder_syntax_in_profile_name_when_rendered_then_kept_literally(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\nrules:\n  - {name: hi, when: ticket_opened, reply: 'Hi {name}, {type}'}\n"
    )
    replies = AutoReplies.load(path)

    reply = replies.match(inbound("x", name="{type}"), opened_ticket=True, ticket_id=1)

    # Substitution is one pass over the template: user text is never expanded again.
    assert reply == Reply("hi", "Hi {type}, message")


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "auto_replies.yaml"
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("rules: []\n", "'version' must be 1"),
        ("version: 1\nrules: {}\n", "'rules' must be a list"),
        ("version: 1\nrules:\n  - {name: a, when: sometimes, reply: x}\n", "'when' must be"),
        ("version: 1\nrules:\n  - {name: a, when: keyword, reply: x}\n", "'keywords' must be"),
        (
            "version: 1\nrules:\n  - {name: a, when: keyword, keywords: [x], reply: '{secret}'}\n",
            "uses {secret}",
        ),
        (
            "version: 1\nrules:\n  - {name: a, when: keyword, keywords: [x], reply: '{ticket_id}'}"
            "\n",
            "uses {ticket_id}",
        ),
        (
            "version: 1\nrules:\n  - {name: a, when: keyword, keywords: ['?!'], reply: x}\n",
            "at least one letter",
        ),
        (
            "version: 1\nrules:\n  - {name: a, when: ticket_opened, reply: x}\n"
            "  - {name: a, when: ticket_opened, reply: y}\n",
            "defined twice",
        ),
        ("version: 1\nrules:\n  - {name: a, when: ticket_opened, reply: x, eval: y}\n", "unknown"),
        ("version: 1\nrules: [\n", "not valid YAML"),
    ],
)
def test_given_malformed_rule_file_when_loaded_then_error_names_file_and_problem(
    tmp_path: Path, body: str, problem: str
) -> None:
    path = write(tmp_path, body)

    with pytest.raises(RulesError) as excinfo:
        AutoReplies.load(path)

    assert str(path) in str(excinfo.value)
    assert problem in str(excinfo.value)


def test_given_defaults_without_price_list_value_when_loaded_then_error_names_placeholder() -> None:
    with pytest.raises(RulesError, match=r"rule 'price'.*\{price_list\}"):
        AutoReplies.load()


def test_given_missing_file_when_loaded_then_error_names_it(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="rule file not found"):
        AutoReplies.load(tmp_path / "nope.yaml")


def test_given_custom_file_when_loaded_then_first_matching_rule_in_file_order_wins(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "version: 1\nrules:\n"
        "  - {name: hours, when: keyword, keywords: [opening hours, open], reply: '9-17'}\n"
        "  - {name: agent, when: keyword, keywords: [agent, human], reply: 'Connecting you'}\n",
    )
    replies = AutoReplies.load(path)

    assert replies.rule_names == ("hours", "agent")
    assert replies.match(inbound("Human please, are you open?"), opened_ticket=False) == Reply(
        "hours", "9-17"
    )
    assert replies.match(inbound("what are your OPENING   hours"), opened_ticket=True) == Reply(
        "hours", "9-17"
    )
    assert replies.match(inbound("hours of opening"), opened_ticket=False) is None
    # No ticket_opened rule in this file: a new ticket alone gets no reply.
    assert replies.match(inbound("hello"), opened_ticket=True, ticket_id=1) is None
