"""The whole path on loopback: real uvicorn server with its workers, the Cloud API sandbox,
the embedded CRM. These are the foundation's "must show" checks, end to end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from wacrm.cli import cli
from wacrm.demo import (
    DISPLAY_NUMBER,
    PHONE_NUMBER_ID,
    Stack,
    post_signed,
    run_demo,
    running_stack,
)
from wacrm.demo_messages import TEST_MESSAGES, envelope
from wacrm.store.schema import inbox, local_crm_records, messages, quarantine, tickets


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path) as running:
        yield running


def _wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def _count(stack: Stack, query: object) -> int:
    with stack.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())  # type: ignore[call-overload]


def test_given_fresh_store_when_demo_runs_then_all_five_messages_pass() -> None:
    checks = run_demo(timeout=30)

    assert [c.label for c in checks] == ["text", "image", "document", "video", "location"]
    assert all(c.passed for c in checks), [c.as_dict() for c in checks]
    assert all(c.latency_ms is not None and c.latency_ms < 5000 for c in checks)
    # The rules engine answers: the price list for the price question, an acknowledgement
    # of the new ticket for the others.
    assert [c.reply_rule for c in checks] == ["price-list"] + ["ticket-ack"] * 4


def test_given_demo_command_when_run_with_json_then_reports_five_of_five() -> None:
    result = CliRunner().invoke(cli, ["demo", "--json"])

    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    assert (report["passed"], report["total"]) == (5, 5)
    assert {m["final_status"] for m in report["messages"]} == {"read"}


def test_given_same_webhook_when_posted_10_times_concurrently_then_one_message_one_ticket(
    stack: Stack,
) -> None:
    body = envelope(
        TEST_MESSAGES[0], phone_number_id=PHONE_NUMBER_ID, display_phone_number=DISPLAY_NUMBER
    )
    raw = orjson.dumps(body)
    wamid = body["entry"][0]["changes"][0]["value"]["messages"][0]["id"]

    def post(_: int) -> int:
        with httpx.Client(base_url=stack.server_url, timeout=10) as http:
            return post_signed(http, raw, stack.app_secret).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        concurrent = list(pool.map(post, range(10)))
    with httpx.Client(base_url=stack.server_url, timeout=10) as http:
        sequential = [post_signed(http, raw, stack.app_secret).status_code for _ in range(10)]

    assert concurrent == [200] * 10 and sequential == [200] * 10
    _wait_for(
        lambda: (
            _count(
                stack,
                select(func.count())
                .select_from(messages)
                .where(messages.c.direction == "out", messages.c.status == "read"),
            )
            == 1
        )
    )
    assert (
        _count(stack, select(func.count()).select_from(inbox).where(inbox.c.event_id == wamid)) == 1
    )
    assert (
        _count(
            stack, select(func.count()).select_from(messages).where(messages.c.direction == "in")
        )
        == 1
    )
    assert _count(stack, select(func.count()).select_from(tickets)) == 1
    assert (
        _count(
            stack,
            select(func.count())
            .select_from(local_crm_records)
            .where(local_crm_records.c.object == "tickets"),
        )
        == 1
    )
    assert len(stack.sandbox.sent) == 1  # one auto-reply left for the customer, not ten


def test_given_wrong_signature_when_posted_then_401_and_nothing_stored(stack: Stack) -> None:
    body = envelope(
        TEST_MESSAGES[1], phone_number_id=PHONE_NUMBER_ID, display_phone_number=DISPLAY_NUMBER
    )
    raw = orjson.dumps(body)

    with httpx.Client(base_url=stack.server_url, timeout=10) as http:
        response = post_signed(http, raw, "not-the-app-secret")

    assert response.status_code == 401
    assert "signature" in response.json()["error"].lower()
    assert _count(stack, select(func.count()).select_from(inbox)) == 0
    assert _count(stack, select(func.count()).select_from(quarantine)) == 0
