"""The no-reply reminder, on a simulated clock: exactly one per unanswered conversation,
across restarts, and none when a person answered in time."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine
from test_rules_support import (
    T0,
    add_contact,
    count,
    hours,
    inbound,
    outbound,
    rows,
    runtime,
)

from wacrm.rules.loader import load_rules
from wacrm.rules.runtime import RuleRuntime
from wacrm.store.schema import contacts, crm_outbox, rule_events, rule_firings, tasks
from wacrm.workers.rule_timer import RuleTimer


def _timer(engine: Engine) -> RuleTimer:
    # A new timer and runtime each time: what a restarted server builds.
    return RuleTimer(engine, runtime(), clock=lambda: pytest.fail("tests pass the time"))


def test_given_unanswered_48h_when_timer_runs_often_across_restarts_then_one_reminder(
    engine: Engine, account_id: int
) -> None:
    contact = add_contact(engine, account_id, name="Layla Hassan")
    inbound(engine, account_id, contact, T0, "السعر؟")
    inbound(engine, account_id, contact, hours(3), "؟؟")  # same unanswered stretch

    assert _timer(engine).tick(hours(47.9)) == 0
    assert count(engine, tasks) == 0

    first = _timer(engine)
    assert first.tick(hours(48)) == 1
    assert first.tick(hours(48)) == 0
    engine.dispose()  # the process goes away; only the store remains
    for at in (48.5, 49, 72, 24 * 20):
        assert _timer(engine).tick(hours(at)) == 0

    (task,) = rows(engine, tasks)
    assert task.contact_id == contact
    assert task.subject == "Answer Layla Hassan +966501234567 on WhatsApp: waiting 48 h"
    assert task.due_at == hours(48)
    assert count(engine, rule_firings, rule="no-reply-reminder") == 1
    assert count(engine, rule_events, name="conversation.unanswered") == 1
    (row,) = rows(engine, contacts, id=contact)
    assert "no-reply-48h" in orjson.loads(row.tags)
    creates = rows(engine, crm_outbox, object="tasks")
    assert len(creates) == 1 and creates[0].record_key == task.idempotency_key


@pytest.mark.parametrize("answered_at", [1, 47])
def test_given_agent_answer_before_48h_when_timer_runs_then_no_reminder(
    engine: Engine, account_id: int, answered_at: float
) -> None:
    contact = add_contact(engine, account_id)
    inbound(engine, account_id, contact, T0)
    outbound(engine, account_id, contact, hours(answered_at))

    timer = _timer(engine)
    assert [timer.tick(hours(h)) for h in (48, 49, 96, 500)] == [0, 0, 0, 0]
    assert count(engine, tasks) == 0


def test_given_only_an_automatic_reply_when_48h_pass_then_reminder_still_fires(
    engine: Engine, account_id: int
) -> None:
    contact = add_contact(engine, account_id)
    inbound(engine, account_id, contact, T0, "price?")
    outbound(engine, account_id, contact, T0 + timedelta(seconds=2), rule="price-list")

    assert _timer(engine).tick(hours(48)) == 1


def test_given_agent_answer_failed_when_48h_pass_then_reminder_fires(
    engine: Engine, account_id: int
) -> None:
    contact = add_contact(engine, account_id)
    inbound(engine, account_id, contact, T0)
    outbound(engine, account_id, contact, hours(1), status="failed")

    assert _timer(engine).tick(hours(48)) == 1


def test_given_new_message_after_answer_when_48h_pass_again_then_second_reminder(
    engine: Engine, account_id: int
) -> None:
    contact = add_contact(engine, account_id)
    inbound(engine, account_id, contact, T0)
    timer = _timer(engine)
    assert timer.tick(hours(48)) == 1
    outbound(engine, account_id, contact, hours(49))
    inbound(engine, account_id, contact, hours(50))  # a new episode begins

    assert timer.tick(hours(97.9)) == 0
    assert timer.tick(hours(98)) == 1
    assert timer.tick(hours(200)) == 0
    assert count(engine, tasks) == 2


def test_given_timer_down_at_48h_when_it_starts_at_60h_then_reminder_fires_late(
    engine: Engine, account_id: int
) -> None:
    contact = add_contact(engine, account_id)
    inbound(engine, account_id, contact, T0)

    assert _timer(engine).tick(hours(60)) == 1
    (task,) = rows(engine, tasks)
    assert "waiting 60 h" in task.subject


def test_given_reaction_only_when_48h_pass_then_no_reminder(
    engine: Engine, account_id: int
) -> None:
    contact = add_contact(engine, account_id)
    inbound(engine, account_id, contact, T0, "👍", type="reaction")

    assert _timer(engine).tick(hours(48)) == 0


def test_given_many_contacts_when_tick_pages_then_each_gets_one_reminder(
    engine: Engine, account_id: int
) -> None:
    ids = [add_contact(engine, account_id, phone=f"+96650123{i:04d}") for i in range(7)]
    for i, contact in enumerate(ids):
        inbound(engine, account_id, contact, T0 + timedelta(minutes=i))
    timer = RuleTimer(engine, runtime(), page_size=2)

    assert timer.tick(hours(49)) == 7
    assert sorted(t.contact_id for t in rows(engine, tasks)) == sorted(ids)


def test_given_rule_only_in_business_hours_when_due_at_night_then_fires_next_morning(
    engine: Engine, account_id: int, tmp_path: Path
) -> None:
    rules_file = tmp_path / "r.yaml"
    rules_file.write_text(
        "version: 1\n"
        "rules:\n"
        "  - name: nudge\n"
        "    when: {no_reply: {hours: 2}}\n"
        "    if: [{business_hours: {timezone: UTC, days: mon-fri, from: '09:00', to: '17:00'}}]\n"
        "    then: [{create_task: {subject: nudge}}]\n"
    )
    timer = RuleTimer(engine, RuleRuntime(load_rules([rules_file])))
    contact = add_contact(engine, account_id)
    inbound(engine, account_id, contact, hours(10))  # Monday 19:00

    assert timer.tick(hours(12)) == 0  # 21:00: due, but out of hours
    assert timer.tick(hours(23.5)) == 0  # Tuesday 08:30
    assert timer.tick(hours(24)) == 1  # Tuesday 09:00
    assert count(engine, tasks) == 1


async def test_given_running_timer_when_stopped_after_a_poll_then_it_fired_and_returned(
    engine: Engine, account_id: int
) -> None:
    contact = add_contact(engine, account_id)
    inbound(engine, account_id, contact, T0)
    stop = asyncio.Event()
    polls: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        polls.append(seconds)
        stop.set()

    timer = RuleTimer(engine, runtime(), clock=lambda: hours(48), sleep=fake_sleep)
    await asyncio.wait_for(timer.run(stop), timeout=30)

    assert polls == [60.0]
    assert count(engine, tasks) == 1
