"""Every Cloud API error code's reaction, seen from the outbox worker.

One parametrised test walks every row of :data:`wacrm.whatsapp.errors.ERROR_TABLE` (a row
added later is covered without touching this file): given one outbound row and a scripted
Graph API answering that code, when the worker processes it, then the effects the code's
action implies are in the store, the log and the next passes. Another pair of tests ties the
table to the fact sheet's error-code table (``facts/whatsapp.md`` §2 "Errors").

Time is the fake clock (sleeping advances it); every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import PHONE_NUMBER_ID
from sqlalchemy import Engine, select
from whatsapp_support import (
    ALICE,
    BOB,
    Clock,
    Graph,
    add_contact,
    add_outbound,
    graph_error,
    make_worker,
    message_row,
    outbox_row,
)

from wacrm.store.schema import contacts
from wacrm.whatsapp.errors import ERROR_TABLE, ErrorRule, SendAction
from wacrm.whatsapp.meta_bodies import template_message, text_message
from wacrm.workers.whatsapp_outbox import OutboxPolicy, WhatsAppOutboxWorker
from wacrm.workers.whatsapp_policy import CONTACT_FLAGS

A = SendAction

# --- the fact sheet's error-code table, copied --------------------------------------------

# Copied from facts/whatsapp.md §2 "Errors" (in the shared notes next to this repository,
# ../shared/facts/whatsapp.md; a clean checkout may not have them, so the copy is data here):
# each row's codes, its "sender action" cell verbatim, and the action that cell means.
# test_given_facts_file_when_present_then_the_copy_still_matches_it keeps it in step.
FACTS_ERROR_ROWS: tuple[tuple[tuple[int, ...], str, SendAction], ...] = (
    ((130429,), "back off; token-bucket ≤ mps", A.RETRY_BACKOFF),
    ((131056,), "delay that recipient only (4^X s)", A.DELAY_RECIPIENT),
    ((4,), "back off", A.RETRY_BACKOFF),
    ((80007,), "back off, reduce frequency", A.RETRY_BACKOFF),
    ((131048,), "stop campaign, check quality", A.HALT_ALERT),
    ((131047,), "resend as a **template**", A.SWITCH_TO_TEMPLATE),
    ((131026,), "don't retry; flag contact", A.NEVER_RETRY_FLAG_CONTACT),
    ((132000, 132001, 132012), "permanent: fix the request", A.FIX_REQUEST),
    ((132015, 132016), "stop using it", A.STOP_TEMPLATE),
    ((368,), "halt sends, alert ops", A.HALT_ALERT),
    ((131031,), "halt, alert ops", A.HALT_ALERT),
    ((131050,), "never retry; record it", A.NEVER_RETRY_FLAG_CONTACT),
    ((131049,), "wait ≥24 h", A.WAIT_24H),
    ((1, 2, 131000, 131016, 131057), "retry with backoff", A.RETRY_BACKOFF),
    ((0, 190), "refresh credentials; don't spin", A.REFRESH_CREDENTIALS),
)
FACTS_CODES = [code for codes, _, _ in FACTS_ERROR_ROWS for code in codes]

FACTS_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "facts" / "whatsapp.md"
FACTS_TABLE_HEADER = "| code | meaning | sender action |"


def parse_facts_error_rows(markdown: str) -> list[tuple[tuple[int, ...], str]]:
    """The (codes, sender action) rows of the fact sheet's error-code table."""
    lines = markdown.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == FACTS_TABLE_HEADER]
    if len(starts) != 1:
        pytest.fail(
            f"{FACTS_FILE}: expected one error-code table headed {FACTS_TABLE_HEADER!r}, "
            f"found {len(starts)}; update parse_facts_error_rows to the new layout"
        )
    rows = []
    for line in lines[starts[0] + 1 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if set(cells[0]) <= set("-: "):
            continue  # the |---|---| separator
        codes = tuple(int(c) for c in re.findall(r"\d+", cells[0]))
        assert codes, f"{FACTS_FILE}: an error-table row without a code: {line!r}"
        rows.append((codes, cells[2]))
    return rows


def test_given_facts_error_codes_when_looked_up_then_each_in_error_table_with_its_action() -> None:
    missing = [code for code in FACTS_CODES if code not in ERROR_TABLE]
    wrong = [
        (code, ERROR_TABLE[code].action.value, action.value)
        for codes, _, action in FACTS_ERROR_ROWS
        for code in codes
        if code in ERROR_TABLE and ERROR_TABLE[code].action is not action
    ]

    assert missing == [], f"facts/whatsapp.md error codes missing from ERROR_TABLE: {missing}"
    assert wrong == [], f"(code, table action, facts action) that disagree: {wrong}"


def test_given_facts_file_when_present_then_the_copy_still_matches_it() -> None:
    copied = [(codes, text) for codes, text, _ in FACTS_ERROR_ROWS]
    if FACTS_FILE.exists():  # the shared notes sit beside the checkout: compare with them
        parsed = parse_facts_error_rows(FACTS_FILE.read_text(encoding="utf-8"))

        assert parsed == copied, (
            f"{FACTS_FILE}'s error-code table changed: update FACTS_ERROR_ROWS "
            "(and ERROR_TABLE) to match it"
        )
    else:  # a clean checkout (CI): the copy alone must still be a usable table
        assert len(FACTS_CODES) == len(set(FACTS_CODES)) == 23, "a code copied twice or lost"
        assert all(text for _, text in copied)


# --- the worker's reaction to each code ----------------------------------------------------


@dataclass
class Scene:
    """A store with Alice and Bob (both wrote an hour ago: the 24 h window is open)."""

    engine: Engine
    account_id: int
    clock: Clock
    caplog: pytest.LogCaptureFixture
    alice: int
    bob: int

    def worker(self, graph: Graph) -> WhatsAppOutboxWorker:
        # No mps pacing: the sender never sleeps, so the clock only moves when a test moves it.
        return make_worker(self.engine, self.clock, graph.client(), mps=None)

    def text(self, to: str, contact: int, body: str, **extra: Any) -> tuple[int, int]:
        return add_outbound(
            self.engine,
            self.account_id,
            text_message(to, body),
            at=self.clock.now,
            contact_id=contact,
            **extra,
        )

    def template(self, name: str) -> tuple[int, int]:
        return add_outbound(
            self.engine,
            self.account_id,
            template_message(ALICE, name, "en"),
            at=self.clock.now,
            contact_id=self.alice,
        )

    def tags(self, contact: int) -> set[str]:
        with self.engine.connect() as conn:
            raw = conn.execute(select(contacts.c.tags).where(contacts.c.id == contact)).scalar()
        return set(orjson.loads(raw or "[]"))

    def logged(self, level: int, *parts: str) -> list[str]:
        return [
            r.getMessage()
            for r in self.caplog.records
            if r.levelno == level and all(p in r.getMessage() for p in parts)
        ]


@pytest.fixture
def scene(engine: Engine, account_id: int, caplog: pytest.LogCaptureFixture) -> Scene:
    clock = Clock()
    caplog.set_level(logging.INFO)
    wrote = clock.now - timedelta(hours=1)
    return Scene(
        engine,
        account_id,
        clock,
        caplog,
        add_contact(engine, account_id, ALICE, wrote),
        add_contact(engine, account_id, BOB, wrote),
    )


def accepted(to: str, wamid: str) -> httpx.Response:
    """A Cloud API 200 for a scripted answer placed between errors."""
    return httpx.Response(
        200,
        json={
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
            "messages": [{"id": wamid}],
        },
    )


def no_flag_tags(scene: Scene) -> set[str]:
    """Alice's tags that are contact flags: none unless the code's action flags her."""
    return scene.tags(scene.alice) & set(CONTACT_FLAGS.values())


def retried_with_backoff(scene: Scene, code: int, rule: ErrorRule) -> None:
    graph = Graph(graph_error(code), graph_error(code))
    message_id, outbox_id = scene.text(ALICE, scene.alice, "retry me")
    worker = scene.worker(graph)
    start = scene.clock.now

    worker.process_due()
    first = outbox_row(scene.engine, outbox_id)
    again_at_once = worker.process_due()
    scene.clock.now = first.next_attempt_at
    worker.process_due()
    second = outbox_row(scene.engine, outbox_id)
    scene.clock.now = second.next_attempt_at
    worker.process_due()

    assert (first.state, first.attempts) == ("pending", 1)
    assert first.last_error.startswith(f"(#{code})")
    assert again_at_once == 0  # not sent twice immediately
    # Backoff 2 s doubling per attempt, "equal jitter" with jitter 0: half of 2 s, then of 4 s.
    assert first.next_attempt_at == start + timedelta(seconds=1)
    assert (second.state, second.attempts) == ("pending", 2)
    assert second.next_attempt_at == first.next_attempt_at + timedelta(seconds=2)
    assert len(graph.bodies) == 3
    assert outbox_row(scene.engine, outbox_id).state == "sent"
    assert message_row(scene.engine, message_id).error_code is None
    assert no_flag_tags(scene) == set()


def recipient_delayed(scene: Scene, code: int, rule: ErrorRule) -> None:
    graph = Graph(graph_error(code))
    _, to_alice = scene.text(ALICE, scene.alice, "a1")
    _, to_bob = scene.text(BOB, scene.bob, "b1")
    _, alice_later = scene.text(ALICE, scene.alice, "a2")
    worker = scene.worker(graph)
    start = scene.clock.now

    worker.process_due()
    first_pass = [b["text"]["body"] for b in graph.bodies]
    delayed = outbox_row(scene.engine, to_alice)
    scene.clock.now = delayed.next_attempt_at
    worker.process_due()

    assert first_pass == ["a1", "b1"]  # Bob still sent in the same pass; a2 waits behind a1
    assert outbox_row(scene.engine, to_bob).state == "sent"
    assert delayed.state == "pending"
    assert delayed.last_error.startswith(f"(#{code})")
    assert delayed.next_attempt_at == start + timedelta(seconds=4)  # 4^X s, X = 1
    assert [b["text"]["body"] for b in graph.bodies][2:] == ["a1"]
    assert outbox_row(scene.engine, to_alice).state == "sent"
    assert outbox_row(scene.engine, alice_later).state == "pending"  # order kept: after a1


def switched_to_template(scene: Scene, code: int, rule: ErrorRule) -> None:
    fallback = template_message(ALICE, "follow_up", "en_US")
    graph = Graph(graph_error(code), accepted(ALICE, "wamid.TEMPLATE"), graph_error(code))
    alice_message, with_fallback = scene.text(ALICE, scene.alice, "free text", fallback=fallback)
    bob_message, without = scene.text(BOB, scene.bob, "free text")
    worker = scene.worker(graph)

    worker.process_due()

    assert [(b["to"], b["type"]) for b in graph.bodies] == [
        (ALICE, "text"),
        (ALICE, "template"),  # the fallback goes next, in the same pass
        (BOB, "text"),
    ]
    assert graph.bodies[1]["template"]["name"] == "follow_up"
    row = outbox_row(scene.engine, with_fallback)
    assert row.state == "sent"
    assert orjson.loads(row.request)["type"] == "template"
    message = message_row(scene.engine, alice_message)
    assert (message.type, message.provider_message_id) == ("template", "wamid.TEMPLATE")
    # No fallback to switch to: failed for good with the code, the contact not flagged.
    assert outbox_row(scene.engine, without).state == "failed"
    assert message_row(scene.engine, bob_message).error_code == str(code)
    assert scene.tags(scene.bob) & set(CONTACT_FLAGS.values()) == set()


def failed_and_flagged(scene: Scene, code: int, rule: ErrorRule) -> None:
    assert code in CONTACT_FLAGS, f"{code} flags the contact, but CONTACT_FLAGS has no tag for it"
    graph = Graph(graph_error(code))
    message_id, outbox_id = scene.text(ALICE, scene.alice, "x")
    worker = scene.worker(graph)

    worker.process_due()
    scene.clock.advance(86400)
    worker.process_due()

    row = outbox_row(scene.engine, outbox_id)
    assert (row.state, row.attempts) == ("failed", 1)
    message = message_row(scene.engine, message_id)
    assert (message.status, message.error_code, message.error_title) == (
        "failed",
        str(code),
        rule.title,
    )
    assert no_flag_tags(scene) == {CONTACT_FLAGS[code]}
    assert len(graph.bodies) == 1  # never retried


def failed_to_fix(scene: Scene, code: int, rule: ErrorRule) -> None:
    graph = Graph(graph_error(code))
    message_id, outbox_id = scene.text(ALICE, scene.alice, "x")
    worker = scene.worker(graph)

    worker.process_due()
    scene.clock.advance(86400)
    worker.process_due()

    assert outbox_row(scene.engine, outbox_id).state == "failed"
    message = message_row(scene.engine, message_id)
    assert (message.status, message.error_code, message.error_title) == (
        "failed",
        str(code),
        rule.title,
    )
    assert len(graph.bodies) == 1  # permanent: not retried
    assert no_flag_tags(scene) == set()  # the request is wrong, not the contact


def template_stopped(scene: Scene, code: int, rule: ErrorRule) -> None:
    graph = Graph(graph_error(code))
    first_message, first = scene.template("promo")
    later_message, later = scene.template("promo")
    _, other = scene.template("receipt")
    worker = scene.worker(graph)

    worker.process_due()

    assert [b["template"]["name"] for b in graph.bodies] == ["promo", "receipt"]
    assert outbox_row(scene.engine, first).state == "failed"
    assert message_row(scene.engine, first_message).error_code == str(code)
    later_row = outbox_row(scene.engine, later)
    assert later_row.state == "failed"  # failed locally: the stopped template is not asked for
    assert "stopped" in later_row.last_error
    assert message_row(scene.engine, later_message).error_code == str(code)
    assert outbox_row(scene.engine, other).state == "sent"
    assert no_flag_tags(scene) == set()


def credentials_paused(scene: Scene, code: int, rule: ErrorRule) -> None:
    graph = Graph(graph_error(code, status=401))
    alice_message, to_alice = scene.text(ALICE, scene.alice, "a")
    _, to_bob = scene.text(BOB, scene.bob, "b")
    worker = scene.worker(graph)
    start = scene.clock.now
    pause = OutboxPolicy().credentials_pause

    worker.process_due()
    alice_row, bob_row = outbox_row(scene.engine, to_alice), outbox_row(scene.engine, to_bob)
    scene.clock.advance(60)
    while_paused = worker.process_due()
    scene.clock.now = start + pause
    worker.process_due()

    assert len(graph.bodies) == 3  # the refused one; nothing else until the pause ended
    assert while_paused == 0
    for row in (alice_row, bob_row):  # kept, not failed, no attempt spent: the token is wrong
        assert (row.state, row.attempts) == ("pending", 0)
        assert row.next_attempt_at == start + pause
    assert message_row(scene.engine, alice_message).status == "queued"
    assert scene.logged(logging.ERROR, "credentials rejected", "WACRM_WHATSAPP_ACCESS_TOKEN")
    assert outbox_row(scene.engine, to_alice).state == "sent"  # the pause ends: tried again
    assert outbox_row(scene.engine, to_bob).state == "sent"


def halted_and_alerted(scene: Scene, code: int, rule: ErrorRule) -> None:
    graph = Graph(graph_error(code))
    alice_message, to_alice = scene.text(ALICE, scene.alice, "a")
    _, to_bob = scene.text(BOB, scene.bob, "b")
    worker = scene.worker(graph)

    worker.process_due()
    halted = dict(worker.halted)
    kept = [outbox_row(scene.engine, to_alice), outbox_row(scene.engine, to_bob)]
    scene.clock.advance(3600)
    while_halted = worker.process_due()
    worker.resume(PHONE_NUMBER_ID)
    worker.process_due()

    assert list(halted) == [PHONE_NUMBER_ID]
    assert halted[PHONE_NUMBER_ID].startswith(f"(#{code})")
    assert scene.logged(logging.CRITICAL, "ALERT", PHONE_NUMBER_ID, f"(#{code})")
    assert while_halted == 0  # nothing from the number until ops resume it
    assert [(row.state, row.attempts) for row in kept] == [("pending", 0), ("pending", 0)]
    assert message_row(scene.engine, alice_message).status == "queued"
    assert len(graph.bodies) == 3  # the refused send; then both, once resumed
    assert outbox_row(scene.engine, to_alice).state == "sent"
    assert outbox_row(scene.engine, to_bob).state == "sent"


def waited_24h(scene: Scene, code: int, rule: ErrorRule) -> None:
    graph = Graph(graph_error(code))
    _, outbox_id = scene.template("promo")  # marketing: a template, so no 24 h window applies
    worker = scene.worker(graph)
    start = scene.clock.now

    worker.process_due()
    row = outbox_row(scene.engine, outbox_id)
    scene.clock.advance(86400 - 1)
    too_soon = worker.process_due()
    scene.clock.advance(1)
    worker.process_due()

    assert (row.state, row.attempts) == ("pending", 1)
    assert row.next_attempt_at == start + timedelta(hours=24)
    assert too_soon == 0
    assert len(graph.bodies) == 2
    assert outbox_row(scene.engine, outbox_id).state == "sent"
    assert no_flag_tags(scene) == set()


Reaction = Callable[[Scene, int, ErrorRule], None]

REACTIONS: Mapping[SendAction, Reaction] = {
    A.RETRY_BACKOFF: retried_with_backoff,
    A.DELAY_RECIPIENT: recipient_delayed,
    A.SWITCH_TO_TEMPLATE: switched_to_template,
    A.NEVER_RETRY_FLAG_CONTACT: failed_and_flagged,
    A.FIX_REQUEST: failed_to_fix,
    A.STOP_TEMPLATE: template_stopped,
    A.REFRESH_CREDENTIALS: credentials_paused,
    A.HALT_ALERT: halted_and_alerted,
    A.WAIT_24H: waited_24h,
}

TABLE_ROWS = sorted(ERROR_TABLE.items())


@pytest.mark.parametrize(
    ("code", "rule"), TABLE_ROWS, ids=[f"{code}-{rule.action.value}" for code, rule in TABLE_ROWS]
)
def test_given_graph_answers_table_code_when_worker_processes_then_reacts_as_table_says(
    scene: Scene, code: int, rule: ErrorRule
) -> None:
    reaction = REACTIONS.get(rule.action)
    assert reaction is not None, f"no reaction test for {rule.action!r} (code {code}): add one"

    reaction(scene, code, rule)
