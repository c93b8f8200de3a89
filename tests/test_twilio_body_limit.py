"""Twilio's 1,600-character ``Body`` limit (twilio.com/docs/api/errors/21617), lower than
Meta's 4,096 for a text: a longer text to a Twilio number is refused before it is paced or
sent, by the outbox worker (failed for good with 21617) and by ``wacrm send`` (one line,
exit status 2).

The worker tests run on SQLite and PostgreSQL (the ``engine`` fixture); time is a fake clock.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine
from test_twilio_cli import AUTH_TOKEN as CLI_TOKEN
from test_twilio_cli import twilio_env
from test_twilio_outbox import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    HELLO_SID,
    TWILIO_NUMBER,
    make_worker,
    queue,
)
from whatsapp_support import ALICE, BOB, Clock, add_contact, message_row, outbox_row

from wacrm.cli import cli
from wacrm.sandbox.twilio import TwilioSandbox
from wacrm.store.accounts import register_number
from wacrm.whatsapp.meta_bodies import text_message


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sandbox() -> TwilioSandbox:
    return TwilioSandbox(
        ACCOUNT_SID, AUTH_TOKEN, senders=(TWILIO_NUMBER,), content_sids=(HELLO_SID,)
    )


@pytest.fixture
def twilio_account(engine: Engine, account_id: int, clock: Clock) -> int:
    """The default account with a Twilio number; Alice and Bob wrote an hour ago."""
    register_number(engine, account_id, TWILIO_NUMBER, provider="twilio")
    for phone in (ALICE, BOB):
        add_contact(engine, account_id, phone, clock.now - timedelta(hours=1))
    return account_id


def test_given_1601_char_text_to_twilio_number_when_processed_then_failed_unpaced_unsent(
    engine: Engine, twilio_account: int, clock: Clock, sandbox: TwilioSandbox
) -> None:
    long_id, long_outbox = queue(engine, twilio_account, text_message(ALICE, "x" * 1601), clock)
    queue(engine, twilio_account, text_message(BOB, "short"), clock)
    worker = make_worker(engine, clock, sandbox, mps=1.0)

    worker.process_due()
    clock.advance(3600)

    assert worker.process_due() == 0  # never retried
    assert [s.form["To"] for s in sandbox.sent] == ["whatsapp:" + BOB] and not sandbox.refused
    assert clock.slept == []  # the refused row took no mps token: Bob's went out at once
    message = message_row(engine, long_id)
    assert (message.status, message.error_code, message.error_title) == (
        "failed",
        "21617",
        "Body over 1,600 characters",
    )
    row = outbox_row(engine, long_outbox)
    assert row.state == "failed"
    assert "text.body is 1601 characters; Twilio's limit for Body is 1600" in row.last_error


def test_given_1600_char_text_to_twilio_number_when_processed_then_sent(
    engine: Engine, twilio_account: int, clock: Clock, sandbox: TwilioSandbox
) -> None:
    message_id, _ = queue(engine, twilio_account, text_message(ALICE, "x" * 1600), clock)

    make_worker(engine, clock, sandbox).process_due()

    [sent] = sandbox.sent
    assert len(sent.form["Body"]) == 1600
    assert message_row(engine, message_id).provider_message_id == sent.sid


def test_given_1601_char_text_when_wacrm_send_twilio_then_one_line_exit_2_naming_limit(
    tmp_path: Path,
) -> None:
    argv = ["send", "--provider", "twilio", "--to", ALICE, "--text", "x" * 1601]

    # The API base URL points nowhere: anything that tried to send would fail differently.
    result = CliRunner().invoke(cli, argv, env=twilio_env(tmp_path))

    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("wacrm: error: text.body is 1601 characters")
    assert "Twilio's limit for Body is 1600" in line and "21617" in line
    assert "Traceback" not in result.output and CLI_TOKEN not in result.output
