"""Issue #4's must-show, through the mounted route of a real server: a change made in the CRM
is in the mirror within 2 s of its change webhook.

- SQLite, the server's own sync loop: the CRM simulator signs its webhook (v3) and posts it to
  ``/webhooks/crm`` of a real uvicorn server; the sync loop there reads the simulator.
- SQLite, the full ``wacrm serve`` composition (``build_workers``), the embedded CRM.
- PostgreSQL, ``wacrm serve`` as a process: the server process sends a CRM change datagram to
  its supervised worker process, whose sync loop reads the embedded CRM.

Each first lets the sync loop's first (baseline) read happen, so the next one is 30 min away:
only the webhook can bring the measured change in time.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import APP_SECRET, PG_URL, VERIFY_TOKEN
from sqlalchemy import Engine, select, text

from wacrm.config import Secret, Settings
from wacrm.connectors.local import LocalConnector
from wacrm.sandbox.crm import CrmSimulator, SimConfig, sign_v3
from wacrm.sandbox.crm_app import create_app as create_simulator_app
from wacrm.server.background import BackgroundServer
from wacrm.server.runtime import build_app
from wacrm.store import create_store_engine
from wacrm.store.accounts import ensure_account
from wacrm.store.schema import contacts
from wacrm.sync.commands import SimulatorTarget, build_sync_worker
from wacrm.workers.base import Worker

MUST_SHOW_SECONDS = 2.0
PORTAL = "62515"
APP_ID = "1160452"


def _settings(database_url: str, secret: str, tmp_path: Path) -> Settings:
    return replace(
        Settings(),
        database_url=database_url,
        whatsapp_app_secret=Secret(APP_SECRET),
        whatsapp_verify_token=Secret(VERIFY_TOKEN),
        crm_webhook_secret=Secret(secret),
        crm_tenant=PORTAL,
        crm_app_id=APP_ID,
        media_dir=str(tmp_path / "media"),
    )


def _priority(engine: Engine, phone: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(contacts.c.priority).where(contacts.c.phone == phone)).scalar()


def _seconds_until(predicate: Callable[[], bool], timeout: float = 20.0) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if predicate():
            return time.perf_counter() - started
        time.sleep(0.005)
    raise AssertionError(f"not reached in {timeout} s")


def _signed_post(server_url: str, events: list[dict[str, Any]], secret: str) -> httpx.Response:
    """What HubSpot sends for a change in the embedded CRM."""
    url = f"{server_url}/webhooks/crm"
    body = orjson.dumps(events)
    now = int(time.time() * 1000)
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Request-Timestamp": str(now),
        "X-HubSpot-Signature-v3": sign_v3(secret, "POST", url, body, now),
    }
    return httpx.post(url, content=body, headers=headers, timeout=10)


def _change_event(object_id: str) -> dict[str, Any]:
    return {
        "eventId": 7,
        "portalId": int(PORTAL),
        "subscriptionType": "contact.propertyChange",
        "propertyName": "priority",
        "propertyValue": "high",
        "objectId": int(object_id),
        "changeSource": "CRM_UI",
        "sourceId": "userId:1",
        "occurredAt": int(time.time() * 1000),
    }


def test_given_an_edit_in_the_simulator_when_its_signed_webhook_reaches_the_server_then_mirrored(
    tmp_path: Path,
) -> None:
    secret = secrets.token_hex(16)
    url = f"sqlite:///{tmp_path / 'wacrm.db'}"
    wacrm, crm = BackgroundServer(), BackgroundServer()
    sim = CrmSimulator(SimConfig(rate_limit=10_000, window=1.0, client_secret=secret))

    def sync_against_simulator(_settings: Settings, engine: Engine) -> tuple[Worker, ...]:
        return (build_sync_worker(engine, SimulatorTarget(crm.url)),)

    app = build_app(_settings(url, secret, tmp_path), sync_against_simulator)
    engine = create_store_engine(url)
    try:
        crm.start(create_simulator_app(sim, f"{wacrm.url}/webhooks/crm"))
        wacrm.start(app)
        with httpx.Client(base_url=crm.url, timeout=10) as http:

            def edit(phone: str) -> None:
                http.post(
                    f"/_sim/records/contacts/{phone}",
                    json={"properties": {"phone": phone, "priority": "high"}},
                ).raise_for_status()

            edit("+15550100001")  # the first read, whichever brings it
            _seconds_until(lambda: _priority(engine, "+15550100001") == "high")
            edit("+15550100002")
            seconds = _seconds_until(lambda: _priority(engine, "+15550100002") == "high")
            stats = http.get("/_sim/stats").json()
    finally:
        wacrm.stop()
        crm.stop()
        engine.dispose()

    assert seconds < MUST_SHOW_SECONDS
    assert stats["webhooks"]["refused"] == 0
    assert stats["webhooks"]["delivered"] >= 2


def test_given_the_full_serve_composition_when_a_signed_webhook_arrives_then_mirrored(
    tmp_path: Path,
) -> None:
    secret = secrets.token_hex(16)
    url = f"sqlite:///{tmp_path / 'wacrm.db'}"
    app = build_app(_settings(url, secret, tmp_path))  # build_workers: what `wacrm serve` runs
    engine = create_store_engine(url)
    crm = LocalConnector(engine, ensure_account(engine, "default"))
    # Made before the server starts, so its first read brings the contact into the mirror
    # (made later, only a webhook or the 30-minute baseline read would).
    crm.update_properties("contacts", "+15550100003", {"phone": "+15550100003"})
    with BackgroundServer(app) as server:
        try:
            _seconds_until(lambda: _priority(engine, "+15550100003") is None and _exists(engine))
            record_id = crm.update_properties(
                "contacts", "+15550100003", {"phone": "+15550100003", "priority": "high"}
            )
            answer = _signed_post(server.url, [_change_event(record_id)], secret)
            seconds = _seconds_until(lambda: _priority(engine, "+15550100003") == "high")
        finally:
            engine.dispose()

    assert answer.json() == {"woken": 1, "unknown_portals": []}
    assert seconds < MUST_SHOW_SECONDS


def _exists(engine: Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(contacts.c.id)).first() is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def pg_schema_url(pg_engine: Engine) -> Iterator[tuple[Engine, str]]:
    """The ``pg_engine`` schema as a URL another process can open."""
    with pg_engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    sep = "&" if "?" in PG_URL else "?"
    yield pg_engine, f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


def test_given_postgresql_when_serve_gets_a_signed_webhook_then_its_worker_process_reads_it(
    pg_schema_url: tuple[Engine, str], tmp_path: Path
) -> None:
    engine, url = pg_schema_url
    secret = secrets.token_hex(16)
    port = _free_port()
    env = {
        **os.environ,
        "WACRM_DATABASE_URL": url,
        "WACRM_WHATSAPP_APP_SECRET": APP_SECRET,
        "WACRM_WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
        "WACRM_CRM_WEBHOOK_SECRET": secret,
        "WACRM_CRM_TENANT": PORTAL,
        "WACRM_CRM_APP_ID": APP_ID,
        "WACRM_MEDIA_DIR": str(tmp_path / "media"),
        "WACRM_CONFIG": str(tmp_path / "none.toml"),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "wacrm.cli", "serve", "--port", str(port)], env=env, cwd=tmp_path
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _seconds_until(lambda: _healthy(base), timeout=60)
        crm = LocalConnector(engine, ensure_account(engine, "default"))
        crm.update_properties("contacts", "+15550100004", {"phone": "+15550100004"})
        # The worker process's first read (its own start-up may still be under way).
        _seconds_until(lambda: _exists(engine), timeout=60)
        record_id = crm.update_properties(
            "contacts", "+15550100004", {"phone": "+15550100004", "priority": "high"}
        )
        answer = _signed_post(base, [_change_event(record_id)], secret)
        seconds = _seconds_until(lambda: _priority(engine, "+15550100004") == "high")
    finally:
        # SIGINT, as Ctrl-C: serve stops its worker process before it exits (after SIGTERM
        # uvicorn re-raises it, and the orphaned worker would outlive this test's schema).
        server.send_signal(signal.SIGINT)
        server.wait(30)

    # The server process runs no sync loop: it told the worker process (one datagram).
    assert answer.json() == {"woken": 1, "unknown_portals": []}
    assert seconds < MUST_SHOW_SECONDS


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
