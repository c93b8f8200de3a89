"""One sender per business number (a lease in ``sending_numbers``), and halts that outlive
the worker that saw them, lifted by ``wacrm numbers resume``. Runs on SQLite and, when
WACRM_TEST_DATABASE_URL is set, on PostgreSQL: there two `wacrm serve` machines share one
store, and each pacing the same number for itself would send twice Meta's rate."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import PHONE_NUMBER_ID
from sqlalchemy import Engine, select, text
from whatsapp_support import (
    ALICE,
    BOB,
    Clock,
    Graph,
    add_contact,
    add_outbound,
    add_outbound_to_many,
    graph_error,
    make_worker,
    outbox_row,
)

from wacrm.cli import cli
from wacrm.store.schema import sending_numbers
from wacrm.whatsapp.meta_bodies import text_message

OTHER_NUMBER = "106540352242999"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _queue(engine: Engine, account_id: int, clock: Clock, count: int, number: str) -> list[int]:
    """``count`` messages from ``number``, each to a contact of its own who wrote lately."""
    return add_outbound_to_many(
        engine,
        account_id,
        count,
        at=clock.now,
        wrote_at=clock.now - timedelta(hours=1),
        phone_prefix=f"+1650{number[-3:]}",
        phone_number_id=number,
    )


def test_given_a_sender_holds_a_number_when_another_claims_then_it_gets_none_of_its_rows(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    _queue(engine, account_id, clock, 6, PHONE_NUMBER_ID)
    graph = Graph()
    first = make_worker(engine, clock, graph.client(), batch_size=3)
    second = make_worker(engine, clock, graph.client(), batch_size=3)

    assert first.process_due() == 3  # takes the number's lease with its claim
    assert second.process_due() == 0  # the number is held: nothing of it is claimed
    clock.advance(10)
    assert first.process_due() == 3  # the holder goes on (and renews)

    with engine.connect() as conn:
        [row] = conn.execute(select(sending_numbers)).all()
    assert row.sender == first._leases.name and row.lease_until > clock.now


def test_given_two_numbers_when_two_senders_claim_then_each_sends_from_one(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    _queue(engine, account_id, clock, 2, PHONE_NUMBER_ID)
    graph = Graph()
    first = make_worker(engine, clock, graph.client(), batch_size=2)
    second = make_worker(engine, clock, graph.client(), batch_size=2)
    assert first.process_due() == 2
    _queue(engine, account_id, clock, 2, OTHER_NUMBER)

    assert second.process_due() == 2  # the other number is free
    with engine.connect() as conn:
        holders = dict(
            conn.execute(select(sending_numbers.c.phone_number_id, sending_numbers.c.sender)).all()
        )
    assert holders == {PHONE_NUMBER_ID: first._leases.name, OTHER_NUMBER: second._leases.name}


def test_given_holder_stops_or_dies_when_another_claims_then_it_takes_the_number_over(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    ids = _queue(engine, account_id, clock, 6, PHONE_NUMBER_ID)
    graph = Graph()
    first = make_worker(engine, clock, graph.client(), batch_size=2)
    second = make_worker(engine, clock, graph.client(), batch_size=2)
    third = make_worker(engine, clock, graph.client(), batch_size=2)
    assert first.process_due() == 2

    first.release_numbers()  # a clean stop frees it at once
    assert second.process_due() == 2
    clock.advance(29)
    assert third.process_due() == 0  # second may still be sending: its lease holds
    clock.advance(2)  # second died without a word: its lease ran out (30 s)
    assert third.process_due() == 2

    assert len(graph.bodies) == 6
    assert {outbox_row(engine, i).state for i in ids} == {"sent"}


def test_given_account_restricted_when_a_new_worker_starts_then_number_stays_halted_until_resumed(
    engine: Engine, account_id: int, clock: Clock, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    alice = add_contact(engine, account_id, ALICE, clock.now - timedelta(hours=1))
    bob = add_contact(engine, account_id, BOB, clock.now - timedelta(hours=1))
    graph = Graph(graph_error(368))
    _, first = add_outbound(
        engine, account_id, text_message(ALICE, "1"), at=clock.now, contact_id=alice
    )
    _, second = add_outbound(
        engine, account_id, text_message(BOB, "2"), at=clock.now, contact_id=bob
    )
    with caplog.at_level(logging.CRITICAL):
        make_worker(engine, clock, graph.client()).process_due()
    restarted = make_worker(engine, clock, graph.client())  # a restart, or another machine
    clock.advance(3600)

    while_halted = restarted.process_due()
    tried = len(graph.bodies)
    listed = _cli(engine, tmp_path, "numbers", "list", "--json")
    resumed = _cli(engine, tmp_path, "numbers", "resume", PHONE_NUMBER_ID)
    after = restarted.process_due()

    assert "wacrm numbers resume " + PHONE_NUMBER_ID in caplog.text
    assert while_halted == 0 and tried == 1  # only the one that drew 368
    [state] = [json.loads(line) for line in listed.output.splitlines()]
    assert state["phone_number_id"] == PHONE_NUMBER_ID and "(#368)" in state["halted_reason"]
    assert state["queued"] == 2
    assert resumed.exit_code == 0 and PHONE_NUMBER_ID in resumed.output
    assert after == 2
    assert outbox_row(engine, first).state == outbox_row(engine, second).state == "sent"


def test_given_halted_worker_when_resumed_from_the_command_then_its_own_halt_is_lifted(
    engine: Engine, account_id: int, clock: Clock, tmp_path: Path
) -> None:
    alice = add_contact(engine, account_id, ALICE, clock.now - timedelta(hours=1))
    graph = Graph(graph_error(131031))
    _, row = add_outbound(
        engine, account_id, text_message(ALICE, "1"), at=clock.now, contact_id=alice
    )
    worker = make_worker(engine, clock, graph.client())
    worker.process_due()
    assert PHONE_NUMBER_ID in worker.halted

    _cli(engine, tmp_path, "numbers", "resume", "--all")
    clock.advance(5)
    worker.process_due()  # notices the resume
    worker.process_due()

    assert PHONE_NUMBER_ID not in worker.halted
    assert outbox_row(engine, row).state == "sent"


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["numbers", "resume"], "give a PHONE_NUMBER_ID or --all"),
        (["numbers", "resume", "123", "--all"], "give a PHONE_NUMBER_ID or --all"),
        (["numbers", "resume", "123"], "number 123 is not halted"),
    ],
)
def test_given_bad_resume_when_run_then_one_line_and_exit_2(
    engine: Engine, tmp_path: Path, argv: list[str], reason: str
) -> None:
    result = _cli(engine, tmp_path, *argv)

    assert result.exit_code == 2
    assert result.output.strip() == f"wacrm: error: {reason}" + (
        " (see wacrm numbers list)" if "not halted" in reason else ""
    )


def _cli(engine: Engine, tmp_path: Path, *argv: str) -> Result:
    """``wacrm`` on the test's store (on PostgreSQL, its own schema)."""
    url = engine.url.render_as_string(hide_password=False)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar()
        url += f"{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    env = {"WACRM_CONFIG": str(tmp_path / "absent.toml"), "WACRM_DATABASE_URL": url}
    return CliRunner().invoke(cli, list(argv), env=env)


def test_given_no_numbers_when_listed_then_says_how_they_come(
    engine: Engine, tmp_path: Path
) -> None:
    result = _cli(engine, tmp_path, "numbers", "list")

    assert result.exit_code == 0
    assert result.output.strip() == (
        "no business numbers yet (wacrm serve registers WACRM_WHATSAPP_PHONE_NUMBER_ID)"
    )
