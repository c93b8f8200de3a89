"""Parts of a webhook body, each on its own: a malformed entry or change is quarantined
beside the good events (Meta re-sends a refused body as it was, for days), updates that name
only the WhatsApp Business Account (WABA) are routed by it, and events keyed by their content
are told apart by what distinguishes them (the entry's time, the messages beside an error).
Runs on SQLite and, when WACRM_TEST_DATABASE_URL is set, on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import orjson
import pytest
from sqlalchemy import Engine
from test_inbox_processor import Clock, make_processor
from test_server_webhooks import (
    URL,
    WABA_ID,
    change,
    envelope,
    inbox_rows,
    quarantine_rows,
    serving,
    settings_for_tests,
    signed,
    template_update,
    text_message,
)

from wacrm.server import create_app
from wacrm.server.ingest import rows_for_events
from wacrm.store.accounts import NumberDirectory, register_waba
from wacrm.store.inbox import insert_inbox_rows
from wacrm.whatsapp.meta_webhook import split_envelope


@pytest.fixture
async def client(engine: Engine, account_id: int) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(create_app(settings_for_tests(), engine)) as c:
        yield c


async def test_given_bad_change_beside_a_good_one_when_posted_then_good_stored_bad_quarantined(
    client: httpx.AsyncClient, engine: Engine, account_id: int
) -> None:
    body = envelope([{"field": "messages"}, change(messages=[text_message("wamid.good", "1650")])])
    body["entry"].append({"id": WABA_ID})  # an entry without changes
    raw = orjson.dumps(body)

    response = await client.post(URL, content=raw, headers=signed(raw))

    assert response.status_code == 200
    assert [r.event_id for r in inbox_rows(engine)] == ["wamid.good"]
    reasons = [r.reason for r in quarantine_rows(engine)]
    assert reasons == ["a change has no 'value' object", "an entry has no 'changes' array"]
    first = orjson.loads(quarantine_rows(engine)[0].payload)
    assert first["payload"] == {"part": {"field": "messages"}}


async def test_given_only_malformed_parts_when_posted_then_200_and_kept_in_quarantine(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    raw = b'{"entry": [{"changes": [{"field": "messages"}]}, 7]}'

    response = await client.post(URL, content=raw, headers=signed(raw))

    assert response.status_code == 200
    assert inbox_rows(engine) == []
    assert len(quarantine_rows(engine)) == 2


async def test_given_unknown_waba_when_template_update_posted_then_quarantined_naming_setting(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    raw = template_update()

    response = await client.post(URL, content=raw, headers=signed(raw))

    assert response.status_code == 200
    assert inbox_rows(engine) == []
    [row] = quarantine_rows(engine)
    assert WABA_ID in row.reason and "WACRM_WHATSAPP_BUSINESS_ACCOUNT_ID" in row.reason


async def test_given_paused_approved_paused_and_a_retry_when_posted_then_three_events(
    client: httpx.AsyncClient, engine: Engine, account_id: int
) -> None:
    register_waba(engine, account_id, WABA_ID)
    bodies = [
        template_update("PAUSED", 1764000000),
        template_update("APPROVED", 1764000600),
        template_update("PAUSED", 1764001200),
        template_update("PAUSED", 1764001200),  # Meta's retry of the one before
    ]

    for raw in bodies:
        assert (await client.post(URL, content=raw, headers=signed(raw))).status_code == 200

    events = [orjson.loads(r.payload)["value"]["event"] for r in inbox_rows(engine)]
    assert events == ["PAUSED", "APPROVED", "PAUSED"]


def test_given_same_error_beside_two_messages_when_split_then_two_events_naming_them() -> None:
    error = {"code": 131000, "title": "Something went wrong", "message": "Something went wrong"}

    def body(wamid: str) -> dict[str, object]:
        found = change(messages=[text_message(wamid, "16505551234")])
        found["value"]["errors"] = [error]
        return envelope([found])

    first = [e for e in split_envelope(body("wamid.A")) if e.kind == "error"]
    second = [e for e in split_envelope(body("wamid.B")) if e.kind == "error"]

    assert first[0].event_id != second[0].event_id
    assert first[0].payload["message_ids"] == ["wamid.A"]


def test_given_message_from_a_waba_when_processed_then_its_updates_route_to_that_account(
    engine: Engine, account_id: int
) -> None:
    directory = NumberDirectory(engine)
    assert directory.account_for_waba(WABA_ID) is None
    raw = orjson.dumps(envelope([change(messages=[text_message("wamid.w", "16505551234")])]))
    (event,) = split_envelope(orjson.loads(raw))
    rows, _ = rows_for_events([event], lambda _p: account_id, datetime.now(UTC))
    with engine.begin() as conn:
        insert_inbox_rows(conn, rows)
    make_processor(engine, Clock()).process_pending()

    assert directory.account_for_waba(WABA_ID) == account_id
    register_waba(engine, account_id, WABA_ID)  # the setting agrees: nothing to change
