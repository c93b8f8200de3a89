"""Fan-out: one delivery per (subscription, matching event), exactly once, across crashes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hooks_support import BOX, NOW, FakeDns, deliveries, emit, subscription_row
from sqlalchemy import Engine

from wacrm.hooks import fanout
from wacrm.hooks.fanout import fan_out
from wacrm.hooks.subscriptions import subscribe
from wacrm.store.accounts import ensure_account
from wacrm.store.schema import hook_deliveries, hook_subscriptions

LATER = NOW + timedelta(minutes=5)  # every event of NOW has settled


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    """No test here asks real DNS: every name resolves to a public address."""
    return FakeDns().install(monkeypatch)


def pairs(engine: Engine) -> list[tuple[int, int]]:
    return [(d.subscription_id, d.event_id) for d in deliveries(engine)]


def test_given_subscriptions_by_event_when_fanned_out_then_each_gets_its_matching_events(
    engine: Engine, account_id: int
) -> None:
    other = ensure_account(engine, "other")
    orders = subscribe(
        engine, account_id, "order.status_changed", "https://a.example/h", NOW, box=BOX
    )
    everything = subscribe(engine, account_id, "*", "https://b.example/h", NOW, box=BOX)
    order = emit(engine, account_id, "order.status_changed")
    handover = emit(engine, account_id, "handover")
    emit(engine, other, "order.status_changed")  # not this account's

    assert fan_out(engine, LATER) == 3

    a, b = orders.subscription.id, everything.subscription.id
    assert sorted(pairs(engine)) == sorted([(a, order), (b, order), (b, handover)])
    assert all(d.state == "pending" and d.next_attempt_at == LATER for d in deliveries(engine))
    assert subscription_row(engine, a).delivered_through == handover  # past what it skipped


def test_given_fan_out_run_again_when_nothing_new_then_no_duplicates(
    engine: Engine, account_id: int
) -> None:
    subscribe(engine, account_id, "*", "https://a.example/h", NOW, box=BOX)
    for _ in range(3):
        emit(engine, account_id)

    assert fan_out(engine, LATER) == 3
    assert fan_out(engine, LATER) == 0
    assert fan_out(engine, NOW) == 0

    assert len(deliveries(engine)) == 3


def test_given_crash_before_commit_when_fan_out_rerun_then_each_event_exactly_once(
    engine: Engine, account_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = subscribe(engine, account_id, "*", "https://a.example/h", NOW, box=BOX).subscription
    events = [emit(engine, account_id) for _ in range(3)]

    # The process dies after the delivery rows were inserted, before the transaction
    # advancing delivered_through commits.
    real_update = hook_subscriptions.update

    def crashing_update() -> Any:
        raise RuntimeError("power cut")

    monkeypatch.setattr(hook_subscriptions, "update", crashing_update)
    with pytest.raises(RuntimeError, match="power cut"):
        fan_out(engine, LATER)
    monkeypatch.setattr(hook_subscriptions, "update", real_update)
    assert deliveries(engine) == []  # rolled back with it
    assert subscription_row(engine, sub.id).delivered_through == sub.delivered_through

    assert fan_out(engine, LATER) == 3
    assert fan_out(engine, LATER) == 0

    assert pairs(engine) == [(sub.id, e) for e in events]
    assert subscription_row(engine, sub.id).delivered_through == events[-1]


def test_given_high_water_mark_lost_when_fanned_out_again_then_unique_key_keeps_one_each(
    engine: Engine, account_id: int
) -> None:
    sub = subscribe(engine, account_id, "*", "https://a.example/h", NOW, box=BOX).subscription
    events = [emit(engine, account_id) for _ in range(2)]
    fan_out(engine, LATER)
    with engine.begin() as conn:  # as if the advance had been lost
        conn.execute(
            hook_subscriptions.update()
            .where(hook_subscriptions.c.id == sub.id)
            .values(delivered_through=0)
        )
        conn.execute(hook_deliveries.update().values(state="delivered"))

    assert fan_out(engine, LATER) == 0

    assert pairs(engine) == [(sub.id, e) for e in events]
    assert all(d.state == "delivered" for d in deliveries(engine))


def test_given_lower_id_committing_after_higher_when_fanned_out_then_neither_is_skipped(
    engine: Engine, account_id: int
) -> None:
    sub = subscribe(engine, account_id, "*", "https://a.example/h", NOW, box=BOX).subscription
    # Ids are given out before commit: event 6 commits, the fan-out runs, then 5 commits.
    emit(engine, account_id, event_id=6)
    assert fan_out(engine, NOW) == 1
    emit(engine, account_id, event_id=5)

    assert fan_out(engine, NOW + timedelta(seconds=1)) == 1

    assert sorted(pairs(engine)) == [(sub.id, 5), (sub.id, 6)]
    assert subscription_row(engine, sub.id).delivered_through == 0  # not settled yet
    assert fan_out(engine, LATER) == 0
    assert subscription_row(engine, sub.id).delivered_through == 6


def test_given_more_events_than_a_page_when_fanned_out_then_all_delivered_once(
    engine: Engine, account_id: int
) -> None:
    sub = subscribe(
        engine, account_id, "handover", "https://a.example/h", NOW, box=BOX
    ).subscription
    names = ["handover", "order.status_changed", "handover", "handover", "other", "handover"]
    events = [emit(engine, account_id, n) for n in names]

    assert fan_out(engine, LATER, page_size=2) == 4
    assert fan_out(engine, LATER, page_size=2) == 0

    assert pairs(engine) == [
        (sub.id, e) for e, n in zip(events, names, strict=True) if n == "handover"
    ]
    assert subscription_row(engine, sub.id).delivered_through == events[-1]


def test_given_other_worker_advanced_meanwhile_when_fanning_out_then_its_page_left_to_it(
    engine: Engine, account_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = subscribe(engine, account_id, "*", "https://a.example/h", NOW, box=BOX).subscription
    event = emit(engine, account_id)
    real = fanout._fan_out_one

    def racing(eng: Engine, row: Any, *args: Any) -> int:
        fan_out_behind_our_back = real(eng, row, *args)  # the other worker's pass
        assert fan_out_behind_our_back == 1
        return real(eng, row, *args)  # ours, from the stale delivered_through

    monkeypatch.setattr(fanout, "_fan_out_one", racing)

    # The other worker's rows and advance stand; ours, from a stale mark, rolls back quietly.
    assert fan_out(engine, LATER) == 0

    assert pairs(engine) == [(sub.id, event)]
    assert subscription_row(engine, sub.id).delivered_through == event
