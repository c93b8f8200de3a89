"""The webhook server: Meta's handshake, signed delivery into the inbox, and failure answers.

Payloads follow the documented Cloud API shapes (facts/whatsapp.md §1). Every test runs on
SQLite and, when WACRM_TEST_DATABASE_URL is set, on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner
from conftest import APP_SECRET, PHONE_NUMBER_ID, VERIFY_TOKEN
from sqlalchemy import Engine, select, text

from wacrm.cli import cli
from wacrm.config import ConfigError, Secret, Settings
from wacrm.server import create_app
from wacrm.server.app import WacrmApp
from wacrm.server.background import BackgroundServer
from wacrm.server.ingest import rows_for_events
from wacrm.server.runtime import ensure_default_account, open_store
from wacrm.store import create_store_engine
from wacrm.store.accounts import NumberDirectory, register_waba
from wacrm.store.schema import inbox, quarantine, whatsapp_numbers
from wacrm.whatsapp.meta_webhook import WebhookEvent, sign

URL = "/webhooks/whatsapp"
WABA_ID = "102290129340398"
USER_ID = "US.13491208655302741918"
THREE_MB = 3 * 1024 * 1024


# --- payloads: the documented Cloud API shapes ---------------------------------------------


def contact(wa_id: str, name: str, user_id: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"profile": {"name": name}, "wa_id": wa_id}
    if user_id is not None:
        found["user_id"] = user_id
    return found


def text_message(wamid: str, wa_id: str, body: str = "Hi, what is the price?") -> dict[str, Any]:
    return {
        "from": wa_id,
        "id": wamid,
        "timestamp": "1749416383",
        "type": "text",
        "text": {"body": body},
    }


def status(wamid: str, state: str, recipient: str = "16505551234") -> dict[str, Any]:
    return {
        "id": wamid,
        "status": state,
        "timestamp": "1749416400",
        "recipient_id": recipient,
        "pricing": {
            "billable": True,
            "pricing_model": "PMP",
            "type": "regular",
            "category": "utility",
        },
    }


def change(
    *,
    messages: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    contacts: list[dict[str, Any]] | None = None,
    phone_number_id: str = PHONE_NUMBER_ID,
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
    }
    if contacts is not None:
        value["contacts"] = contacts
    if messages is not None:
        value["messages"] = messages
    if statuses is not None:
        value["statuses"] = statuses
    return {"field": "messages", "value": value}


def envelope(*entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "changes": changes} for changes in entries],
    }


def one_text(
    wamid: str = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=",
) -> bytes:
    body = envelope(
        [
            change(
                contacts=[contact("16505551234", "Kerry Fisher", USER_ID)],
                messages=[text_message(wamid, "16505551234")],
            )
        ]
    )
    return orjson.dumps(body)


def signed(raw: bytes, secret: str = APP_SECRET) -> dict[str, str]:
    return {"X-Hub-Signature-256": sign(raw, secret), "Content-Type": "application/json"}


# --- harness --------------------------------------------------------------------------------


def settings_for_tests(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "whatsapp_app_secret": Secret(APP_SECRET),
        "whatsapp_verify_token": Secret(VERIFY_TOKEN),
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def lifespan(app: WacrmApp) -> AsyncIterator[None]:
    """Drive the ASGI lifespan protocol the way uvicorn does."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def send(message: Any) -> None:
        await from_app.put(message)

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, to_app.get, send))
    await to_app.put({"type": "lifespan.startup"})
    assert (await from_app.get())["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        assert (await from_app.get())["type"] == "lifespan.shutdown.complete"
        await task


@asynccontextmanager
async def serving(app: WacrmApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://wacrm") as c:
        yield c


@pytest.fixture
async def client(engine: Engine, account_id: int) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(create_app(settings_for_tests(), engine)) as c:
        yield c


def inbox_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(inbox).order_by(inbox.c.id)))


def quarantine_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(quarantine).order_by(quarantine.c.id)))


def assert_json_error(response: httpx.Response, status_code: int, *words: str) -> None:
    assert response.status_code == status_code
    assert response.headers["content-type"].startswith("application/json")
    reason = response.json()["error"]
    for word in words:
        assert word in reason


class RecordingWorker:
    """A worker that records what the server asked of it."""

    name = "recorder"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.stopped = False
        self.wakes = 0

    async def run(self, stop: asyncio.Event) -> None:
        self.started.set()
        await stop.wait()
        self.stopped = True

    def wake(self) -> None:
        self.wakes += 1


# --- GET: verification handshake ------------------------------------------------------------


async def test_given_right_token_when_verifying_then_200_with_the_raw_challenge(
    client: httpx.AsyncClient,
) -> None:
    params = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }

    response = await client.get(URL, params=params)

    assert response.status_code == 200
    assert response.text == "1158201444"
    assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("mode", "token", "reason"),
    [
        ("subscribe", "not-the-token", "hub.verify_token"),
        ("subscribe", "", "hub.verify_token"),
        ("unsubscribe", VERIFY_TOKEN, "hub.mode"),
    ],
)
async def test_given_wrong_token_or_mode_when_verifying_then_403_with_reason(
    client: httpx.AsyncClient, mode: str, token: str, reason: str
) -> None:
    params = {"hub.mode": mode, "hub.verify_token": token, "hub.challenge": "1158201444"}

    response = await client.get(URL, params=params)

    assert_json_error(response, 403, reason)
    assert "1158201444" not in response.text
    assert VERIFY_TOKEN not in response.text


# --- POST: delivery -------------------------------------------------------------------------


async def test_given_same_webhook_when_posted_ten_times_sequentially_then_one_inbox_row(
    client: httpx.AsyncClient, engine: Engine, account_id: int
) -> None:
    raw = one_text()

    answers = [await client.post(URL, content=raw, headers=signed(raw)) for _ in range(10)]

    assert [a.status_code for a in answers] == [200] * 10
    assert all(a.json() == {"status": "ok"} for a in answers)
    rows = inbox_rows(engine)
    assert len(rows) == 1
    assert (rows[0].account_id, rows[0].provider, rows[0].kind) == (account_id, "meta", "message")
    assert rows[0].event_id.startswith("wamid.")
    assert rows[0].state == "pending"


async def test_given_same_webhook_when_posted_ten_times_concurrently_then_one_inbox_row(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    raw = envelope(
        [
            change(
                contacts=[contact("16505551234", "Kerry Fisher")],
                messages=[text_message(f"wamid.concurrent{i}", "16505551234") for i in range(3)],
                statuses=[status("wamid.sent1", "delivered")],
            )
        ]
    )
    body = orjson.dumps(raw)

    answers = await asyncio.gather(
        *(client.post(URL, content=body, headers=signed(body)) for _ in range(10))
    )

    assert [a.status_code for a in answers] == [200] * 10
    ids = sorted(r.event_id for r in inbox_rows(engine))
    assert ids == sorted(
        ["wamid.concurrent0", "wamid.concurrent1", "wamid.concurrent2", "wamid.sent1:delivered"]
    )


async def test_given_envelope_with_many_entries_and_changes_when_posted_then_every_event_stored(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    sticker_like = {
        "from": "447700900123",
        "id": "wamid.new-type",
        "timestamp": "1749416390",
        "type": "hologram",  # a type Meta may add later: stored, not dropped
        "hologram": {"id": "1234"},
    }
    body = envelope(
        [
            change(
                contacts=[
                    contact("16505551234", "Kerry Fisher", USER_ID),
                    contact("447700900123", "Ana Lima"),  # no BSUID yet
                ],
                messages=[
                    text_message("wamid.a1", "16505551234", "price?"),
                    text_message("wamid.a2", "447700900123", "hello"),
                    sticker_like,
                ],
            ),
            change(statuses=[status("wamid.out1", "sent"), status("wamid.out1", "read")]),
        ],
        [change(statuses=[status("wamid.out2", "failed")])],
    )
    raw = orjson.dumps(body)

    response = await client.post(URL, content=raw, headers=signed(raw))

    assert response.status_code == 200
    rows = {r.event_id: r for r in inbox_rows(engine)}
    assert set(rows) == {
        "wamid.a1",
        "wamid.a2",
        "wamid.new-type",
        "wamid.out1:sent",
        "wamid.out1:read",
        "wamid.out2:failed",
    }
    assert {rows[k].kind for k in ("wamid.a1", "wamid.a2", "wamid.new-type")} == {"message"}
    assert rows["wamid.out2:failed"].kind == "status"
    kerry = orjson.loads(rows["wamid.a1"].payload)
    assert kerry["contact"]["user_id"] == USER_ID
    assert kerry["message"]["text"]["body"] == "price?"
    assert kerry["metadata"]["phone_number_id"] == PHONE_NUMBER_ID
    ana = orjson.loads(rows["wamid.a2"].payload)
    assert ana["contact"]["profile"]["name"] == "Ana Lima"
    assert "user_id" not in ana["contact"]
    assert orjson.loads(rows["wamid.new-type"].payload)["message"]["type"] == "hologram"
    assert quarantine_rows(engine) == []


async def test_given_non_ascii_escaped_as_meta_does_when_posted_then_signature_checked_on_raw_bytes(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    # Meta escapes non-ASCII as \uXXXX; re-serialising the JSON would change the bytes.
    raw = one_text("wamid.accent").replace(b"Hi, what is the price?", b"Ol\\u00e1, pre\\u00e7o?")

    response = await client.post(URL, content=raw, headers=signed(raw))

    assert response.status_code == 200
    stored = orjson.loads(inbox_rows(engine)[0].payload)
    assert stored["message"]["text"]["body"] == "Olá, preço?"


async def test_given_unknown_phone_number_id_when_posted_then_quarantined_with_reason_and_200(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    body = envelope(
        [change(messages=[text_message("wamid.stray", "16505551234")], phone_number_id="999")]
    )
    raw = orjson.dumps(body)

    response = await client.post(URL, content=raw, headers=signed(raw))

    assert response.status_code == 200
    assert inbox_rows(engine) == []
    [row] = quarantine_rows(engine)
    assert "phone_number_id 999" in row.reason
    assert row.account_id is None
    assert orjson.loads(row.payload)["event_id"] == "wamid.stray"


async def test_given_message_without_id_when_posted_then_quarantined_beside_the_good_one(
    client: httpx.AsyncClient, engine: Engine, account_id: int
) -> None:
    nameless = text_message("", "16505551234")
    del nameless["id"]
    body = envelope([change(messages=[nameless, text_message("wamid.good", "16505551234")])])
    raw = orjson.dumps(body)

    response = await client.post(URL, content=raw, headers=signed(raw))

    assert response.status_code == 200
    assert [r.event_id for r in inbox_rows(engine)] == ["wamid.good"]
    [row] = quarantine_rows(engine)
    assert row.reason == "message event has no id"
    assert row.account_id == account_id


def template_update(event: str = "APPROVED", time: int = 1764000000) -> bytes:
    """Meta's message_template_status_update: the WABA in entry.id, no phone_number_id."""
    value = {
        "event": event,
        "message_template_id": 12345678,
        "message_template_name": "order_update",
        "message_template_language": "en_US",
        "reason": "NONE",
        "message_template_category": "UTILITY",
    }
    entry = {
        "id": WABA_ID,
        "time": time,
        "changes": [{"field": "message_template_status_update", "value": value}],
    }
    return orjson.dumps({"object": "whatsapp_business_account", "entry": [entry]})


async def test_given_template_status_update_when_posted_then_stored_as_field_event_and_200(
    client: httpx.AsyncClient, engine: Engine, account_id: int
) -> None:
    register_waba(engine, account_id, WABA_ID)
    # A long field name: PostgreSQL enforces the kind column's width, SQLite does not.
    raw = template_update()

    response = await client.post(URL, content=raw, headers=signed(raw))

    assert response.status_code == 200
    [row] = inbox_rows(engine)
    assert (row.kind, row.account_id) == ("field:message_template_status_update", account_id)
    assert orjson.loads(row.payload)["value"]["event"] == "APPROVED"
    assert quarantine_rows(engine) == []


def test_given_event_wider_than_the_inbox_columns_when_split_into_rows_then_quarantined() -> None:
    # On PostgreSQL a too-wide value fails the whole group commit, and so every retry of every
    # webhook in the group; quarantining it keeps the rest flowing.
    now = datetime.now(UTC)
    events = [
        WebhookEvent(PHONE_NUMBER_ID, "field:" + "x" * 200, "digest", {"value": {}}),
        WebhookEvent(PHONE_NUMBER_ID, "message", "wamid." + "9" * 300, {"message": {}}),
        WebhookEvent(PHONE_NUMBER_ID, "message", "wamid.ok", {"message": {}}),
    ]

    rows, quarantined = rows_for_events(events, {PHONE_NUMBER_ID: 7}.get, now)

    assert [r.event_id for r in rows] == ["wamid.ok"]
    assert [q.account_id for q in quarantined] == [7, 7]
    assert "event kind" in quarantined[0].reason
    assert "event id is longer" in quarantined[1].reason


# --- POST: refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (None, "missing X-Hub-Signature-256"),
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64}, "does not match"),
        ({"X-Hub-Signature-256": sign(one_text(), "some-other-secret")}, "does not match"),
        ({"X-Hub-Signature-256": "md5=abc"}, "does not match"),
    ],
)
async def test_given_wrong_or_missing_signature_when_posted_then_401_and_nothing_stored(
    client: httpx.AsyncClient, engine: Engine, headers: dict[str, str] | None, reason: str
) -> None:
    response = await client.post(URL, content=one_text(), headers=headers)

    assert_json_error(response, 401, reason)
    assert APP_SECRET not in response.text
    assert inbox_rows(engine) == []
    assert quarantine_rows(engine) == []


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"object": "whatsapp_business_account", "entry": [', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2, 3]", "must be a JSON object"),
        (b'{"object": "whatsapp_business_account"}', "no 'entry' array"),
    ],
)
async def test_given_malformed_body_when_posted_then_400_with_reason_and_nothing_stored(
    client: httpx.AsyncClient, engine: Engine, raw: bytes, reason: str
) -> None:
    response = await client.post(URL, content=raw, headers=signed(raw))

    assert_json_error(response, 400, reason)
    assert inbox_rows(engine) == []
    assert quarantine_rows(engine) == []


async def test_given_body_over_3_mb_with_length_when_posted_then_413_and_nothing_stored(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    raw = b" " * (THREE_MB + 1)

    response = await client.post(URL, content=raw, headers=signed(raw))

    assert_json_error(response, 413, str(THREE_MB))
    assert inbox_rows(engine) == []


async def test_given_body_over_3_mb_streamed_without_length_when_posted_then_413(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * (1024 * 1024)

    response = await client.post(URL, content=chunks(), headers={"X-Hub-Signature-256": "x"})

    assert "content-length" not in response.request.headers
    assert_json_error(response, 413, str(THREE_MB))
    assert inbox_rows(engine) == []


async def test_given_put_when_sent_to_webhook_then_405_json(client: httpx.AsyncClient) -> None:
    response = await client.put(URL, content=b"{}")

    assert_json_error(response, 405, "PUT")


async def test_given_unknown_path_when_requested_then_404_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/page")

    assert_json_error(response, 404)


# --- the store failing ----------------------------------------------------------------------


async def test_given_inbox_table_gone_when_posted_then_503_never_200(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE inbox"))
    raw = one_text()

    response = await client.post(URL, content=raw, headers=signed(raw))

    assert_json_error(response, 503, "not stored")
    assert quarantine_rows(engine) == []


@pytest.fixture
def dead_engine() -> Iterator[Engine]:
    """An engine whose every connection is refused (nothing listens on loopback port 1)."""
    eng = create_store_engine("postgresql://wacrm@127.0.0.1:1/none")
    yield eng
    eng.dispose()


async def test_given_store_down_when_posted_then_503_and_health_says_so(
    dead_engine: Engine,
) -> None:
    raw = one_text()
    async with serving(create_app(settings_for_tests(), dead_engine)) as c:
        posted = await c.post(URL, content=raw, headers=signed(raw))
        health = await c.get("/healthz")

    assert_json_error(posted, 503, "not stored")
    assert health.status_code == 503
    assert health.json() == {"status": "error", "database": "unavailable"}


async def test_given_store_up_when_health_checked_then_200_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


# --- lifecycle and workers ------------------------------------------------------------------


async def test_given_worker_when_app_runs_then_started_woken_after_commit_and_stopped(
    engine: Engine, account_id: int
) -> None:
    worker = RecordingWorker()
    app = create_app(settings_for_tests(), engine, workers=[worker])
    raw = one_text()

    async with serving(app) as c:
        await asyncio.wait_for(worker.started.wait(), 5)
        wakes_before = worker.wakes
        bad = await c.post(URL, content=raw, headers={"X-Hub-Signature-256": "sha256=00"})
        wakes_after_refusal = worker.wakes
        good = await c.post(URL, content=raw, headers=signed(raw))
        assert not worker.stopped

    assert (bad.status_code, good.status_code) == (401, 200)
    assert (wakes_before, wakes_after_refusal, worker.wakes) == (0, 0, 1)
    assert worker.stopped


async def test_given_directory_passed_when_posted_then_it_routes_the_number(
    engine: Engine, account_id: int
) -> None:
    with engine.begin() as conn:
        conn.execute(whatsapp_numbers.delete())  # only the cached directory knows the number
    directory = NumberDirectory(engine)
    directory._cache[PHONE_NUMBER_ID] = account_id
    raw = one_text()

    async with serving(create_app(settings_for_tests(), engine, directory=directory)) as c:
        response = await c.post(URL, content=raw, headers=signed(raw))

    assert response.status_code == 200
    assert [r.account_id for r in inbox_rows(engine)] == [account_id]


# --- configuration: fail closed -------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "variable"),
    [
        ("whatsapp_app_secret", "WACRM_WHATSAPP_APP_SECRET"),
        ("whatsapp_verify_token", "WACRM_WHATSAPP_VERIFY_TOKEN"),
    ],
)
def test_given_missing_secret_when_creating_app_then_config_error(
    sqlite_engine: Engine, missing: str, variable: str
) -> None:
    with pytest.raises(ConfigError, match=variable):
        create_app(settings_for_tests(**{missing: Secret("")}), sqlite_engine)


def test_given_no_app_secret_when_wacrm_serve_then_one_line_error_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no wacrm.toml from the working tree
    env = {
        "WACRM_CONFIG": str(tmp_path / "absent.toml"),
        "WACRM_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
        "WACRM_WHATSAPP_APP_SECRET": "",
        "WACRM_WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
    }

    result = CliRunner(env=env).invoke(cli, ["serve", "--port", "0"])

    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "wacrm: error: WACRM_WHATSAPP_APP_SECRET is not set: refusing to accept unsigned webhooks"
    ]
    assert not (tmp_path / "serve.db").exists()  # refused before touching the store


def test_given_options_when_wacrm_serve_then_runtime_gets_host_port_and_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Settings, int, bool]] = []
    monkeypatch.setattr(
        "wacrm.server.runtime.serve",
        lambda s, processes, inline_workers: calls.append((s, processes, inline_workers)),
    )
    env = {
        "WACRM_CONFIG": str(tmp_path / "absent.toml"),
        "WACRM_WHATSAPP_APP_SECRET": APP_SECRET,
        "WACRM_WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
    }

    result = CliRunner(env=env).invoke(
        cli, ["serve", "--host", "0.0.0.0", "--port", "9001", "--workers", "2", "--inline-workers"]
    )

    assert result.exit_code == 0, result.output
    [(settings, processes, inline_workers)] = calls
    assert (settings.host, settings.port, processes, inline_workers) == ("0.0.0.0", 9001, 2, True)


# --- runtime --------------------------------------------------------------------------------


def test_given_configured_number_when_ensuring_default_account_twice_then_same_account_routes_it(
    tmp_path: Path,
) -> None:
    settings = settings_for_tests(
        database_url=f"sqlite:///{tmp_path / 'rt.db'}",
        whatsapp_phone_number_id="555000111",
        account_name="acme",
    )
    engine = open_store(settings)
    try:
        first = ensure_default_account(engine, settings)
        second = ensure_default_account(engine, settings)

        assert first == second
        assert NumberDirectory(engine).account_for("555000111") == first
    finally:
        engine.dispose()


def test_given_number_owned_by_other_account_when_ensuring_default_account_then_config_error(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'rt.db'}"
    owner = settings_for_tests(database_url=url, whatsapp_phone_number_id="555", account_name="a")
    other = settings_for_tests(database_url=url, whatsapp_phone_number_id="555", account_name="b")
    engine = open_store(owner)
    try:
        ensure_default_account(engine, owner)

        with pytest.raises(ConfigError, match="WACRM_WHATSAPP_PHONE_NUMBER_ID"):
            ensure_default_account(engine, other)
    finally:
        engine.dispose()


# --- the real HTTP stack --------------------------------------------------------------------


def test_given_real_uvicorn_on_loopback_when_verified_and_posted_then_stored(
    engine: Engine, account_id: int
) -> None:
    app = create_app(settings_for_tests(), engine)
    raw = one_text("wamid.over-tcp")
    challenge = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "42"}

    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        handshake = http.get(URL, params=challenge)
        posted = http.post(URL, content=raw, headers=signed(raw))
        refused = http.post(URL, content=raw, headers=signed(raw, "wrong"))
        health = http.get("/healthz")

    assert (handshake.status_code, handshake.text) == (200, "42")
    assert posted.status_code == 200
    assert refused.status_code == 401
    assert health.json() == {"status": "ok", "database": "ok"}
    assert [r.event_id for r in inbox_rows(engine)] == ["wamid.over-tcp"]
