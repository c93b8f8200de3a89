"""``POST /webhooks/crm`` in the real app: signature, portal → account, echoes, bad input,
and the default account's portal recorded from the settings."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

import httpx
import orjson
import pytest
from conftest import APP_SECRET, VERIFY_TOKEN
from sqlalchemy import Engine, select

from wacrm.config import ConfigError, Secret, Settings
from wacrm.sandbox.crm import sign_v3
from wacrm.server.app import create_app
from wacrm.server.runtime import DownstreamOnly, ensure_default_account
from wacrm.store.accounts import TenantDirectory, ensure_account, set_crm_tenant
from wacrm.store.schema import accounts

CLIENT_SECRET = "crm-client-secret-for-tests"
PORTAL = "62515"
APP_ID = "1160452"
BASE = "http://testserver"


class RecordingSync:
    """Stands in for the sync loop: records what it is told to read."""

    name = "sync"

    def __init__(self) -> None:
        self.changes: list[tuple[int, str]] = []

    def notify_crm_change(self, account_id: int, object: str = "contacts") -> None:
        self.changes.append((account_id, object))

    def wake(self) -> None:
        pass

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()


def _settings(**values: Any) -> Settings:
    defaults: dict[str, Any] = {
        "whatsapp_app_secret": Secret(APP_SECRET),
        "whatsapp_verify_token": Secret(VERIFY_TOKEN),
        "crm_webhook_secret": Secret(CLIENT_SECRET),
        "crm_app_id": APP_ID,
        "crm_tenant": PORTAL,
    }
    return replace(Settings(), **(defaults | values))


def _event(
    portal: str = PORTAL, *, source: str = "CRM_UI", source_id: str = "userId:1"
) -> dict[str, Any]:
    return {
        "eventId": 1,
        "portalId": int(portal) if portal.isdigit() else portal,
        "appId": int(APP_ID),
        "subscriptionType": "contact.propertyChange",
        "propertyName": "priority",
        "propertyValue": "high",
        "objectId": 1001,
        "changeSource": source,
        "sourceId": source_id,
        "occurredAt": 1_795_597_200_000,
    }


async def _post(
    client: httpx.AsyncClient,
    body: bytes,
    *,
    path: str = "/webhooks/crm",
    signed_url: str | None = None,
    secret: str = CLIENT_SECRET,
    timestamp: int | None = None,
) -> Any:
    now = timestamp if timestamp is not None else int(time.time() * 1000)
    url = signed_url or BASE + path
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Request-Timestamp": str(now),
        "X-HubSpot-Signature-v3": sign_v3(secret, "POST", url, body, now),
    }
    return await client.post(path, content=body, headers=headers)


def _app(engine: Engine, settings: Settings, sync: RecordingSync | None) -> httpx.AsyncClient:
    ensure_default_account(engine, settings)
    workers = [DownstreamOnly(sync)] if sync is not None else []  # as build_workers wraps it
    app = create_app(settings, engine, workers=workers)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


def _default_account(engine: Engine) -> int:
    with engine.connect() as conn:
        found = conn.execute(select(accounts.c.id).where(accounts.c.name == "default")).scalar()
    assert found is not None
    return int(found)


async def test_given_a_signed_change_for_our_portal_then_the_sync_loop_is_told_to_read(
    engine: Engine,
) -> None:
    sync = RecordingSync()
    client = _app(engine, _settings(), sync)
    body = orjson.dumps([_event(), _event(), {**_event(), "subscriptionType": "ticket.creation"}])

    response = await _post(client, body)

    assert response.status_code == 200, response.text
    assert response.json() == {"woken": 2, "unknown_portals": []}
    account = _default_account(engine)
    assert sorted(sync.changes) == [(account, "contacts"), (account, "tickets")]


async def test_given_the_crm_named_in_the_path_then_the_same_route_answers(engine: Engine) -> None:
    sync = RecordingSync()
    client = _app(engine, _settings(), sync)
    body = orjson.dumps([_event()])

    named = await _post(client, body, path="/webhooks/crm/hubspot")
    assert named.json()["woken"] == 1
    unknown = await _post(client, body, path="/webhooks/crm/zoho")
    assert unknown.status_code == 404
    assert "known: hubspot" in unknown.json()["error"]


async def test_given_an_unknown_portal_then_200_named_and_logged_and_nothing_read(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    sync = RecordingSync()
    client = _app(engine, _settings(), sync)

    with caplog.at_level(logging.WARNING, logger="wacrm.server.crm_webhook"):
        response = await _post(client, orjson.dumps([_event("999")]))

    assert response.status_code == 200
    assert response.json() == {"woken": 0, "unknown_portals": ["999"]}
    assert sync.changes == []
    assert any("unknown hubspot portal(s) 999" in r.getMessage() for r in caplog.records)


async def test_given_the_echo_of_our_own_write_then_nothing_is_read_but_another_apps_is(
    engine: Engine,
) -> None:
    sync = RecordingSync()
    client = _app(engine, _settings(), sync)

    ours = await _post(client, orjson.dumps([_event(source="INTEGRATION", source_id=APP_ID)]))
    assert ours.json() == {"woken": 0, "unknown_portals": []}
    assert sync.changes == []

    theirs = await _post(client, orjson.dumps([_event(source="INTEGRATION", source_id="42")]))
    assert theirs.json()["woken"] == 1


async def test_given_a_bad_signature_or_stale_timestamp_then_401_json_and_nothing_read(
    engine: Engine,
) -> None:
    sync = RecordingSync()
    client = _app(engine, _settings(), sync)
    body = orjson.dumps([_event()])

    wrong = await _post(client, body, secret="not-the-secret")
    stale = await _post(client, body, timestamp=int(time.time() * 1000) - 301_000)
    unsigned = await client.post("/webhooks/crm", content=body)

    assert [r.status_code for r in (wrong, stale, unsigned)] == [401, 401, 401]
    assert "does not match" in wrong.json()["error"]
    assert "5 minutes old" in stale.json()["error"]
    assert "missing" in unsigned.json()["error"]
    assert CLIENT_SECRET not in wrong.text
    assert sync.changes == []


async def test_given_a_public_url_and_a_query_string_then_the_public_url_is_what_is_verified(
    engine: Engine,
) -> None:
    sync = RecordingSync()
    client = _app(engine, _settings(public_url="https://hooks.example.com/"), sync)
    body = orjson.dumps([_event()])
    path = "/webhooks/crm?install=a%3Ab"

    public = await _post(client, body, path=path, signed_url=f"https://hooks.example.com{path}")
    as_seen = await _post(client, body, path=path, signed_url=f"{BASE}{path}")

    assert public.status_code == 200, public.text
    assert as_seen.status_code == 401


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'[{"portalId": 62515,', "not JSON"),
        (b'{"portalId": 62515}', "JSON array of event objects"),
        (b"[1, 2]", "JSON array of event objects"),
    ],
)
async def test_given_a_signed_body_that_is_not_an_event_list_then_400_with_reason(
    engine: Engine, body: bytes, reason: str
) -> None:
    client = _app(engine, _settings(), RecordingSync())

    response = await _post(client, body)

    assert response.status_code == 400
    assert reason in response.json()["error"]


async def test_given_a_body_over_the_limit_then_413(engine: Engine) -> None:
    client = _app(engine, _settings(max_body_bytes=1024), RecordingSync())
    body = orjson.dumps([_event() for _ in range(20)])
    assert len(body) > 1024

    response = await _post(client, body)

    assert response.status_code == 413
    assert "1024 byte limit" in response.json()["error"]


async def test_given_no_secret_then_the_server_starts_and_the_route_answers_404_with_reason(
    engine: Engine,
) -> None:
    sync = RecordingSync()
    client = _app(engine, _settings(crm_webhook_secret=Secret("")), sync)

    response = await _post(client, orjson.dumps([_event()]), secret="")

    assert response.status_code == 404
    assert "WACRM_CRM_WEBHOOK_SECRET is unset" in response.json()["error"]
    assert sync.changes == []
    assert (await client.get("/healthz")).status_code == 200


async def test_given_a_get_then_405_json(engine: Engine) -> None:
    client = _app(engine, _settings(), RecordingSync())

    response = await client.get("/webhooks/crm")

    assert response.status_code == 405
    assert response.json()["error"]


async def test_given_no_sync_loop_in_this_process_then_answered_but_none_woken(
    engine: Engine,
) -> None:
    client = _app(engine, _settings(), None)

    response = await _post(client, orjson.dumps([_event()]))

    assert response.json() == {"woken": 0, "unknown_portals": []}


def test_given_crm_tenant_setting_then_the_default_account_records_it_once(engine: Engine) -> None:
    settings = _settings()
    first = ensure_default_account(engine, settings)
    again = ensure_default_account(engine, settings)
    other = ensure_account(engine, "second")

    assert first == again
    assert TenantDirectory(engine, ("local",)).account_for(PORTAL) == first
    assert TenantDirectory(engine, ("hubspot",)).account_for(PORTAL) is None
    assert TenantDirectory(engine, ("local",)).account_for("1") is None
    with pytest.raises(ValueError, match="already belongs to account"):
        set_crm_tenant(engine, other, PORTAL)
    with pytest.raises(ConfigError, match="WACRM_CRM_TENANT"):
        ensure_default_account(engine, replace(settings, account_name="second"))


def test_given_a_portal_found_once_then_it_is_cached(engine: Engine) -> None:
    account = ensure_account(engine, "default")
    set_crm_tenant(engine, account, PORTAL)
    directory = TenantDirectory(engine, ("local",))
    assert directory.account_for(PORTAL) == account

    with engine.begin() as conn:  # moved away: the cache still answers, without a query
        conn.execute(accounts.update().values(crm_tenant="moved"))

    assert directory.account_for(PORTAL) == account
