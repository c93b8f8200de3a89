"""The Cloud API error table: every code in facts/whatsapp.md §2 maps to its sender action."""

from __future__ import annotations

import pytest

from wacrm.whatsapp.errors import ERROR_TABLE, UNKNOWN_ERROR, SendAction, classify

A = SendAction

# facts/whatsapp.md §2 "Errors", row by row: code → what the sender must do.
FACTS_TABLE = [
    (130429, A.RETRY_BACKOFF),  # throughput reached: back off
    (131056, A.DELAY_RECIPIENT),  # pair rate: delay that recipient only
    (4, A.RETRY_BACKOFF),  # app API-call rate limit
    (80007, A.RETRY_BACKOFF),  # WABA rate limit
    (131048, A.HALT_ALERT),  # spam / quality: stop the campaign, check quality
    (131047, A.SWITCH_TO_TEMPLATE),  # > 24 h since the user's last message
    (131026, A.NEVER_RETRY_FLAG_CONTACT),  # undeliverable
    (132000, A.FIX_REQUEST),  # template param count
    (132001, A.FIX_REQUEST),  # template not approved for the language
    (132012, A.FIX_REQUEST),  # template param format
    (132015, A.STOP_TEMPLATE),  # template paused
    (132016, A.STOP_TEMPLATE),  # template disabled
    (368, A.HALT_ALERT),  # WABA restricted for policy violation
    (131031, A.HALT_ALERT),  # account locked
    (131050, A.NEVER_RETRY_FLAG_CONTACT),  # user opted out of marketing
    (131049, A.WAIT_24H),  # per-user marketing limit
    (1, A.RETRY_BACKOFF),  # temporary / unknown
    (2, A.RETRY_BACKOFF),
    (131000, A.RETRY_BACKOFF),
    (131016, A.RETRY_BACKOFF),
    (131057, A.RETRY_BACKOFF),  # throughput upgrade in progress
    (0, A.REFRESH_CREDENTIALS),  # auth
    (190, A.REFRESH_CREDENTIALS),  # token expired
]


@pytest.mark.parametrize(("code", "action"), FACTS_TABLE, ids=[str(c) for c, _ in FACTS_TABLE])
def test_given_facts_table_code_when_classified_then_documented_action(
    code: int, action: SendAction
) -> None:
    rule = classify(code)

    assert rule.code == code
    assert rule.action is action
    assert rule.title
    assert len(rule.explanation) > 30  # a sentence a human can act on


@pytest.mark.parametrize("code", [None, 999_999, -1, 131_999])
def test_given_unknown_code_when_classified_then_bounded_retry_default(code: int | None) -> None:
    rule = classify(code)

    assert rule is UNKNOWN_ERROR
    assert rule.action is SendAction.RETRY_BACKOFF
    assert "bounded" in rule.explanation


def test_given_request_validation_codes_when_classified_then_fix_request() -> None:
    assert {classify(c).action for c in (100, 131008, 131009, 131053)} == {A.FIX_REQUEST}


def test_given_actions_when_asked_if_permanent_then_only_non_retryable_ones_are() -> None:
    permanent = {a for a in SendAction if a.permanent}

    assert permanent == {A.NEVER_RETRY_FLAG_CONTACT, A.FIX_REQUEST, A.STOP_TEMPLATE}


def test_given_table_when_read_then_immutable_and_covers_every_action() -> None:
    with pytest.raises(TypeError):
        ERROR_TABLE[1] = UNKNOWN_ERROR  # type: ignore[index]
    assert {rule.action for rule in ERROR_TABLE.values()} == set(SendAction)
