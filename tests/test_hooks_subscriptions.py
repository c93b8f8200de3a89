"""Subscribing: URL and event validation, the secret, starting at the newest event, removal."""

from __future__ import annotations

import pytest
from hooks_support import BOX, NOW, FakeDns, deliveries, emit, subscription_row
from sqlalchemy import Engine

from wacrm.hooks.delivery import HOOK_POLICY
from wacrm.hooks.fanout import fan_out
from wacrm.hooks.subscriptions import (
    HookError,
    check_event,
    check_target_url,
    disable,
    emitted_events,
    list_subscriptions,
    subscribe,
    unsubscribe,
)
from wacrm.rules.loader import load_ruleset
from wacrm.store.accounts import ensure_account

KNOWN = frozenset({"handover", "order.status_changed"})


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    """No test here asks real DNS: every name resolves to a public address."""
    return FakeDns().install(monkeypatch)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/hook", "must use http or https; its scheme is 'ftp'"),
        ("/relative/path", "its scheme is none (not an absolute URL)"),
        ("example.com/hook", "its scheme is none (not an absolute URL)"),
        ("https:///no-host", "names no host"),
        ("https://example.com:99999/hook", "has an invalid port"),
        ("https://example.com/a b", "must not contain spaces"),
        ("https://example.com/hook#frag", "must not have a #fragment"),
        ("", "absolute http or https URL"),
        ("https://example.com/" + "a" * 2100, "longer than 2048 characters"),
    ],
)
def test_given_bad_target_url_when_checked_then_hook_error_says_why(url: str, reason: str) -> None:
    with pytest.raises(HookError) as caught:
        check_target_url(url)

    assert reason in str(caught.value)


@pytest.mark.parametrize(
    "url", ["https://zapier:hunter2@hooks.example.com/x", "https://tok3n@hooks.example.com/x"]
)
def test_given_credentials_in_url_when_checked_then_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(HookError) as caught:
        check_target_url(url)

    assert "must not contain a user name or password" in str(caught.value)
    assert "hunter2" not in str(caught.value) and "tok3n" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "allow_private"),
    [
        ("https://hooks.zapier.com/hooks/standard/1/abc/", False),
        ("http://127.0.0.1:8080/h?x=1", True),  # WACRM_HOOKS_ALLOW_PRIVATE_TARGETS
    ],
)
def test_given_good_url_when_checked_then_kept_as_given(url: str, allow_private: bool) -> None:
    assert check_target_url(url, allow_private=allow_private) == url


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ("Order.Shipped", "is not an event name"),
        ("order shipped", "is not an event name"),
        ("", "must be a rule event name"),
        (None, "must be a rule event name"),
        ("order.shipped", "no loaded rule emits event 'order.shipped'; rules emit: handover, "),
    ],
)
def test_given_bad_event_when_checked_then_hook_error_says_why(event: object, reason: str) -> None:
    with pytest.raises(HookError) as caught:
        check_event(event, KNOWN)

    assert reason in str(caught.value)


def test_given_star_or_emitted_name_when_checked_then_accepted() -> None:
    assert check_event("*", KNOWN) == "*"
    assert check_event("handover", KNOWN) == "handover"
    assert check_event("anything.valid") == "anything.valid"  # no rules given: names only


def test_given_shipped_rules_when_asked_then_their_emitted_events_listed() -> None:
    assert emitted_events(load_ruleset()) >= {
        "handover",  # from hand_over
        "conversation.unanswered",
        "order.status_changed",
    }


def test_given_events_already_emitted_when_subscribed_then_starts_after_the_newest(
    engine: Engine, account_id: int
) -> None:
    other = ensure_account(engine, "other")
    emit(engine, account_id)
    newest = emit(engine, account_id)
    emit(engine, other)  # another account's events do not count

    new = subscribe(engine, account_id, "*", "https://example.com/h", NOW, box=BOX)

    assert new.subscription.delivered_through == newest
    assert subscription_row(engine, new.subscription.id).delivered_through == newest
    assert fan_out(engine, NOW) == 0  # nothing from before the subscription
    emit(engine, account_id)
    assert fan_out(engine, NOW) == 1


def test_given_subscription_when_created_then_strong_secret_shown_once_and_never_listed(
    engine: Engine, account_id: int
) -> None:
    first = subscribe(engine, account_id, "handover", "https://example.com/a", NOW, box=BOX)
    second = subscribe(engine, account_id, "handover", "https://example.com/a", NOW, box=BOX)

    secret = first.secret.reveal()
    assert len(secret) == 64 and int(secret, 16) >= 0  # 256 bits, hex
    assert secret != second.secret.reveal()
    assert secret not in repr(first)
    listed = list_subscriptions(engine, account_id)
    assert [s.id for s in listed] == [first.subscription.id, second.subscription.id]
    assert all("secret" not in s.as_dict() for s in listed)
    assert secret not in repr(listed)


def test_given_subscription_when_removed_then_gone_with_its_deliveries_and_other_accounts_safe(
    engine: Engine, account_id: int
) -> None:
    other = ensure_account(engine, "other")
    sub = subscribe(engine, account_id, "*", "https://example.com/h", NOW, box=BOX).subscription
    emit(engine, account_id)
    fan_out(engine, NOW)
    assert len(deliveries(engine)) == 1

    assert not unsubscribe(engine, other, sub.id)  # not the other account's to remove
    assert unsubscribe(engine, account_id, sub.id)

    assert list_subscriptions(engine, account_id) == []
    assert deliveries(engine) == []
    assert not unsubscribe(engine, account_id, sub.id)


def test_given_subscription_when_disabled_then_reason_kept_pending_dead_and_no_more_fan_out(
    engine: Engine, account_id: int
) -> None:
    sub = subscribe(engine, account_id, "*", "https://example.com/h", NOW, box=BOX).subscription
    emit(engine, account_id)
    fan_out(engine, NOW)

    assert disable(engine, sub.id, "the target answered 410 Gone", NOW)

    [row] = deliveries(engine)
    assert (row.state, row.last_error) == (
        "dead",
        "subscription disabled: the target answered 410 Gone",
    )
    [listed] = list_subscriptions(engine, account_id)
    assert (listed.state, listed.disabled_reason) == ("disabled", "the target answered 410 Gone")
    emit(engine, account_id)
    assert fan_out(engine, NOW) == 0
    assert not disable(engine, sub.id, "again", NOW)


def test_shipped_retry_policy_is_bounded_by_10_attempts_and_24_hours() -> None:
    assert (HOOK_POLICY.max_attempts, HOOK_POLICY.max_elapsed) == (10, 24 * 3600.0)
