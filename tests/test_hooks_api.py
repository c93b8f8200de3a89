"""``/api/hooks``: bearer auth (fail closed), subscribe, list, delete, deliveries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import APP_SECRET, VERIFY_TOKEN
from hooks_support import KEY, NOW, FakeDns, emit
from sqlalchemy import Engine
from starlette.applications import Starlette

from wacrm.config import Secret, Settings, load_settings
from wacrm.hooks.fanout import fan_out
from wacrm.hooks.subscriptions import list_subscriptions
from wacrm.server.app import create_app
from wacrm.store.schema import hook_deliveries

TOKEN = "t0ken-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL = "https://hooks.zapier.example/hooks/standard/1/abc/"


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    """No test here asks real DNS: every name resolves to a public address."""
    return FakeDns().install(monkeypatch)


def settings(token: str = TOKEN) -> Settings:
    return Settings(
        whatsapp_app_secret=Secret(APP_SECRET),
        whatsapp_verify_token=Secret(VERIFY_TOKEN),
        api_token=Secret(token),
        secret_key=Secret(KEY),
    )


async def client_for(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://wacrm") as c:
        yield c


@pytest.fixture
async def api(engine: Engine, account_id: int) -> AsyncIterator[httpx.AsyncClient]:
    """The server's app, as `wacrm serve` builds it (routes mounted in create_app)."""
    app = create_app(settings(), engine)
    async for c in client_for(app.fallback):
        yield c


async def test_given_no_token_configured_when_any_route_called_then_503_and_nothing_done(
    engine: Engine, account_id: int
) -> None:
    app = create_app(settings(token=""), engine)
    async for c in client_for(app.fallback):
        for method, path in [
            ("GET", "/api/hooks"),
            ("POST", "/api/hooks"),
            ("DELETE", "/api/hooks/1"),
        ]:
            response = await c.request(
                method,
                path,
                headers={"Authorization": "Bearer "},
                json={"event": "*", "target_url": URL},
            )
            assert response.status_code == 503
            assert response.json() == {"error": "set WACRM_API_TOKEN to enable the API"}
    assert list_subscriptions(engine, account_id) == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": TOKEN},
    ],
)
async def test_given_missing_or_wrong_token_when_called_then_401_without_echoing_it(
    api: httpx.AsyncClient, engine: Engine, account_id: int, headers: dict[str, str]
) -> None:
    response = await api.post("/api/hooks", headers=headers, json={"event": "*", "target_url": URL})

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "bearer token" in response.json()["error"]
    assert TOKEN not in response.text
    assert list_subscriptions(engine, account_id) == []


async def test_given_valid_subscription_when_posted_then_201_with_secret_once_and_listed_without(
    api: httpx.AsyncClient,
) -> None:
    response = await api.post(
        "/api/hooks", headers=AUTH, json={"event": "handover", "target_url": URL, "extra": 1}
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "event", "target_url", "secret"}
    assert (body["event"], body["target_url"]) == ("handover", URL)
    assert len(body["secret"]) == 64
    listed = await api.get("/api/hooks", headers=AUTH)
    assert listed.status_code == 200
    [hook] = listed.json()["hooks"]
    assert (hook["id"], hook["event"], hook["state"]) == (body["id"], "handover", "active")
    assert "secret" not in hook and body["secret"] not in listed.text


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"not json", 400, "body must be JSON"),
        (b"[1, 2]", 400, "body must be a JSON object"),
        (b'{"event": "handover"}', 422, "target_url must be an absolute http or https URL"),
        (
            b'{"event": "handover", "target_url": "ftp://x.example/h"}',
            422,
            "target_url must use http or https; its scheme is 'ftp'",
        ),
        (
            b'{"event": "handover", "target_url": "https://u:pw@x.example/h"}',
            422,
            "target_url must not contain a user name or password",
        ),
        (
            b'{"event": "order.shipped", "target_url": "https://x.example/h"}',
            422,
            "no loaded rule emits event 'order.shipped'",
        ),
        (b'{"event": 5, "target_url": "https://x.example/h"}', 422, "event must be"),
        (b"{" + b" " * 20000 + b"}", 413, "body is larger than 16384 bytes"),
    ],
)
async def test_given_bad_subscription_when_posted_then_4xx_json_with_reason(
    api: httpx.AsyncClient, engine: Engine, account_id: int, body: bytes, status: int, reason: str
) -> None:
    response = await api.post("/api/hooks", headers=AUTH, content=body)

    assert response.status_code == status
    assert reason in response.json()["error"]
    assert "pw@" not in response.text
    assert list_subscriptions(engine, account_id) == []


async def test_given_subscription_when_deleted_then_204_and_then_404(
    api: httpx.AsyncClient,
) -> None:
    created = (
        await api.post("/api/hooks", headers=AUTH, json={"event": "*", "target_url": URL})
    ).json()

    deleted = await api.delete(f"/api/hooks/{created['id']}", headers=AUTH)
    again = await api.delete(f"/api/hooks/{created['id']}", headers=AUTH)
    bad = await api.delete("/api/hooks/abc", headers=AUTH)

    assert (deleted.status_code, deleted.content) == (204, b"")
    assert (again.status_code, again.json()) == (404, {"error": f"no subscription {created['id']}"})
    assert bad.status_code == 404 and "no subscription" in bad.json()["error"]
    assert (await api.get("/api/hooks", headers=AUTH)).json() == {"hooks": []}


async def test_given_deliveries_when_listed_then_state_attempts_status_and_error_shown(
    api: httpx.AsyncClient, engine: Engine, account_id: int
) -> None:
    created = (
        await api.post("/api/hooks", headers=AUTH, json={"event": "*", "target_url": URL})
    ).json()
    event = emit(engine, account_id, "handover")
    fan_out(engine, NOW)
    with engine.begin() as conn:
        conn.execute(
            hook_deliveries.update().values(
                state="dead", attempts=10, last_status=503, last_error="HTTP 503"
            )
        )

    response = await api.get(f"/api/hooks/{created['id']}/deliveries", headers=AUTH)
    only_pending = await api.get(
        f"/api/hooks/{created['id']}/deliveries?state=pending", headers=AUTH
    )
    bad_state = await api.get(f"/api/hooks/{created['id']}/deliveries?state=lost", headers=AUTH)
    bad_limit = await api.get(f"/api/hooks/{created['id']}/deliveries?limit=0", headers=AUTH)
    unknown = await api.get("/api/hooks/999/deliveries", headers=AUTH)

    [row] = response.json()["deliveries"]
    assert (row["event_id"], row["event"], row["state"]) == (event, "handover", "dead")
    assert (row["attempts"], row["last_status"], row["last_error"]) == (10, 503, "HTTP 503")
    assert only_pending.json() == {"deliveries": []}
    assert bad_state.status_code == 400 and "state must be one of" in bad_state.json()["error"]
    assert bad_limit.status_code == 400 and "limit must be" in bad_limit.json()["error"]
    assert unknown.status_code == 404


async def test_given_routes_alone_when_mounted_then_they_need_no_webhook_app(
    engine: Engine, account_id: int
) -> None:
    from wacrm.hooks.api import HooksApi

    app = Starlette(routes=HooksApi(settings(), engine, known_events={"anything"}).routes())
    async for c in client_for(app):
        response = await c.post(
            "/api/hooks", headers=AUTH, json={"event": "anything", "target_url": URL}
        )
    assert response.status_code == 201


def test_given_token_in_environment_when_settings_loaded_then_held_as_secret(
    tmp_path: Path,
) -> None:
    loaded = load_settings(env={"WACRM_API_TOKEN": TOKEN}, toml_path=tmp_path / "none.toml")

    assert loaded.api_token.reveal() == TOKEN
    assert TOKEN not in repr(loaded)
