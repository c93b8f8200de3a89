"""Language detection of short messages, with the country code as a prior, and the contact
and CRM updates that follow."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine
from test_rules_support import T0, add_contact, inbound, rows, runtime, text_event

from wacrm.rules.language import LanguageDetector
from wacrm.store.schema import contacts, crm_outbox

FIXTURE = Path(__file__).parent.parent / "fixtures" / "language" / "short_messages.jsonl"
REQUIRED = {"ar", "en", "zh", "es", "pt", "hi", "id", "fr"}


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    # Built once: lingua loads its models on first use (about a second).
    found = LanguageDetector()
    found.warm_up()
    return found


def _samples() -> list[dict[str, str]]:
    return [orjson.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]


def test_given_short_real_world_messages_when_detected_then_at_least_90_percent_right(
    detector: LanguageDetector,
) -> None:
    samples = _samples()
    per_language = Counter(s["lang"] for s in samples)
    assert len(samples) >= 80 and set(per_language) >= REQUIRED
    assert min(per_language[lang] for lang in REQUIRED) >= 10

    wrong = []
    for sample in samples:
        found = detector.detect(sample["text"], sample["phone"])
        if found is None or found.language != sample["lang"]:
            wrong.append((sample["text"], sample["lang"], found and found.language))

    accuracy = 1 - len(wrong) / len(samples)
    assert accuracy >= 0.90, f"accuracy {accuracy:.1%}; wrong: {wrong}"


def test_given_ambiguous_text_when_country_speaks_a_close_candidate_then_prior_decides(
    detector: LanguageDetector,
) -> None:
    from_france = detector.detect("d'accord", "+33612345678")
    from_us = detector.detect("d'accord", "+12015550123")

    assert from_france is not None and from_france.language == "fr" and from_france.by_prior
    assert from_us is not None and from_us.language != "fr"


def test_given_clear_text_when_country_differs_then_prior_does_not_overrule(
    detector: LanguageDetector,
) -> None:
    found = detector.detect("where is my order, it was due yesterday", "+966512345678")

    assert found is not None and (found.language, found.by_prior) == ("en", False)


@pytest.mark.parametrize("text", ["👍", "123 456", "?", ""])
def test_given_no_letters_when_detected_then_none(detector: LanguageDetector, text: str) -> None:
    assert detector.detect(text, "+966512345678") is None


def test_given_unknown_language_code_when_built_then_error_names_it() -> None:
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        LanguageDetector(["en", "xx"])


def test_given_contact_without_language_when_message_arrives_then_stored_and_sent_to_crm(
    engine: Engine, account_id: int, detector: LanguageDetector
) -> None:
    contact = add_contact(engine, account_id)
    row_id = inbound(engine, account_id, contact, T0, "متى يوصل الطلب؟")

    with engine.begin() as conn:
        runtime(detector=detector).on_message(
            conn,
            account_id=account_id,
            contact_id=contact,
            message=text_event("متى يوصل الطلب؟"),
            message_row_id=row_id,
            now=T0,
        )

    assert rows(engine, contacts)[0].language == "ar"
    (change,) = rows(engine, crm_outbox, object="contacts")
    assert orjson.loads(change.payload)["properties"] == {"language": "ar"}


def test_given_contact_with_language_when_message_in_another_then_kept_and_crm_untouched(
    engine: Engine, account_id: int, detector: LanguageDetector
) -> None:
    contact = add_contact(engine, account_id, language="en")
    row_id = inbound(engine, account_id, contact, T0, "متى يوصل الطلب؟")

    with engine.begin() as conn:
        runtime(detector=detector).on_message(
            conn,
            account_id=account_id,
            contact_id=contact,
            message=text_event("متى يوصل الطلب؟"),
            message_row_id=row_id,
            now=T0,
        )

    assert rows(engine, contacts)[0].language == "en"
    assert rows(engine, crm_outbox) == []


def test_given_unsure_guess_when_message_arrives_then_language_left_for_later_messages(
    engine: Engine, account_id: int, detector: LanguageDetector
) -> None:
    contact = add_contact(engine, account_id, phone="+14155550100")
    rules = runtime(detector=detector)

    for i, text in enumerate(["ok", "thanks, where is my order?"]):
        row_id = inbound(engine, account_id, contact, T0, text)
        with engine.begin() as conn:
            rules.on_message(
                conn,
                account_id=account_id,
                contact_id=contact,
                message=text_event(text),
                message_row_id=row_id,
                now=T0,
            )
        stored = rows(engine, contacts)[0].language
        assert stored == (None if i == 0 else "en")


@pytest.mark.parametrize(
    ("text", "phone", "sure"),
    [
        ("ok", "+14155550100", False),
        ("hola", "+14155550100", True),
        ("السعر؟", "+14155550100", True),
    ],
)
def test_given_short_text_when_detected_then_sure_only_if_clear_or_country_agrees(
    detector: LanguageDetector, text: str, phone: str, sure: bool
) -> None:
    found = detector.detect(text, phone)

    assert found is not None and found.sure is sure
