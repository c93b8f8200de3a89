"""The change-threshold trigger: when the outbox flushes, and when CRM changes are read."""

from __future__ import annotations

from datetime import timedelta

from test_sync_fakes import T0

from wacrm.sync.trigger import QueueState, Reason, TriggerPolicy, inbound_due, outbound_reason

POLICY = TriggerPolicy()  # 5 %, 30 min


def _state(
    pending: int, *, mirrored: int | None = 1000, age_s: float = 0, urgent: bool = False
) -> QueueState:
    return QueueState(pending, T0 - timedelta(seconds=age_s), urgent, 100, mirrored)


def test_given_changes_under_five_percent_and_young_then_they_wait() -> None:
    assert outbound_reason(POLICY, _state(49), T0) is None


def test_given_five_percent_changed_then_flush_now() -> None:
    assert outbound_reason(POLICY, _state(50), T0) is Reason.THRESHOLD


def test_given_an_urgent_change_then_flush_now_whatever_the_share() -> None:
    assert outbound_reason(POLICY, _state(1, urgent=True), T0) is Reason.URGENT


def test_given_the_oldest_change_reaches_the_baseline_then_flush() -> None:
    assert outbound_reason(POLICY, _state(1, age_s=1799), T0) is None
    assert outbound_reason(POLICY, _state(1, age_s=1800), T0) is Reason.BASELINE


def test_given_a_full_batch_under_the_threshold_then_only_full_batches_go() -> None:
    assert outbound_reason(POLICY, _state(150, mirrored=100_000), T0) is Reason.FULL_BATCH


def test_given_no_mirror_share_for_tickets_then_threshold_does_not_apply() -> None:
    assert outbound_reason(POLICY, _state(3, mirrored=None), T0) is None
    assert outbound_reason(POLICY, _state(3, mirrored=0), T0) is Reason.THRESHOLD


def test_given_a_webhook_then_read_now_else_on_the_baseline() -> None:
    assert inbound_due(POLICY, T0, T0, webhook=True) is Reason.WEBHOOK
    assert inbound_due(POLICY, T0, T0 + timedelta(minutes=29)) is None
    assert inbound_due(POLICY, T0, T0 + timedelta(minutes=30)) is Reason.BASELINE
    assert inbound_due(POLICY, None, T0) is Reason.BASELINE
