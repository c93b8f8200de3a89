"""REST-hook targets are public addresses only (no request forgery into the deployment's
network): refused when subscribing over the API and the CLI, checked again, pinned, at every
delivery (DNS rebinding), and allowed anywhere with WACRM_HOOKS_ALLOW_PRIVATE_TARGETS.

DNS is :class:`FakeDns` throughout: no test asks the network what a name resolves to."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from hooks_support import (
    BOX,
    KEY,
    NOW,
    PUBLIC_IP,
    Clock,
    FakeDns,
    Receiver,
    deliveries,
    emit,
    subscription_row,
)
from sqlalchemy import Engine
from starlette.applications import Starlette

from wacrm.cli import cli
from wacrm.config import ConfigError, Secret, Settings, load_settings
from wacrm.hooks import targets
from wacrm.hooks.api import HooksApi
from wacrm.hooks.subscriptions import HookError, list_subscriptions, subscribe
from wacrm.hooks.targets import SETTING, IPAddress, PublicOnlyTransport
from wacrm.hooks.worker import HookDeliveryWorker

TOKEN = "t0ken-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ONLY_PUBLIC = f"REST hooks go only to public addresses unless {SETTING} is true"

# What the fake DNS says for the names below; any other name is PUBLIC_IP.
NAMES: dict[str, list[str] | OSError] = {
    "loopback.example": ["127.0.0.1"],
    "metadata.example": ["169.254.169.254"],
    "lan6.example": ["fd00::7"],
    "mixed.example": [PUBLIC_IP, "10.0.0.8"],  # one private answer is enough to refuse
    "nxdomain.example": socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
}

# (target URL, the host as the reason names it, what it is)
FORBIDDEN = [
    ("https://127.0.0.1/h", "127.0.0.1", "is a loopback address"),
    ("https://10.1.2.3/h", "10.1.2.3", "is a private address"),
    ("https://172.16.5.4/h", "172.16.5.4", "is a private address"),
    ("https://192.168.1.10:8443/h", "192.168.1.10", "is a private address"),
    ("https://169.254.169.254/latest/meta-data/", "169.254.169.254", "is a link-local address"),
    ("https://100.64.0.1/h", "100.64.0.1", "is an address that is not globally routable"),
    ("https://0.0.0.0/h", "0.0.0.0", "is the unspecified address"),
    ("https://224.0.0.1/h", "224.0.0.1", "is a multicast address"),
    ("https://240.0.0.1/h", "240.0.0.1", "is a reserved address"),
    ("https://[::1]/h", "::1", "is a loopback address"),
    ("https://[::]/h", "::", "is the unspecified address"),
    ("https://[fe80::1]/h", "fe80::1", "is a link-local address"),
    ("https://[fd12:3456::1]/h", "fd12:3456::1", "is a private address"),
    ("https://[fec0::1]/h", "fec0::1", "is a site-local address"),
    ("https://[ff02::1]/h", "ff02::1", "is a multicast address"),
    # IPv6 carrying IPv4: mapped, NAT64, 6to4.
    ("https://[::ffff:127.0.0.1]/h", "::ffff:127.0.0.1", "is a loopback address"),
    ("https://[::ffff:a9fe:a9fe]/h", "::ffff:a9fe:a9fe", "is a link-local address"),
    ("https://[64:ff9b::a00:1]/h", "64:ff9b::a00:1", "is a private address"),
    ("https://[2002:c0a8:101::]/h", "2002:c0a8:101::", "is a private address"),
    # IPv4 as the C resolver also reads it: decimal, octal, hex, short.
    ("https://2130706433/h", "2130706433", "is a loopback address"),
    ("https://0177.0.0.1/h", "0177.0.0.1", "is a loopback address"),
    ("https://0x7f.1/h", "0x7f.1", "is a loopback address"),
    ("https://127.1/h", "127.1", "is a loopback address"),
    ("https://localhost:8443/h", "localhost", "is this machine (localhost)"),
    ("https://LocalHost./h", "localhost.", "is this machine (localhost)"),
    ("https://api.localhost/h", "api.localhost", "is this machine (localhost)"),
    # Names: what they resolve to, and never the address itself.
    ("https://loopback.example/h", "loopback.example", "resolves to a loopback address"),
    ("https://metadata.example/h", "metadata.example", "resolves to a link-local address"),
    ("https://lan6.example/h", "lan6.example", "resolves to a private address"),
    ("https://mixed.example/h", "mixed.example", "resolves to a private address"),
]
ACCEPTED = [
    f"https://{PUBLIC_IP}/h",
    "https://[2606:4700:4700::1111]/h",
    "https://[::ffff:8.8.8.8]/h",  # IPv4-mapped, public
    "https://hooks.example/catch/1/",  # resolves to PUBLIC_IP
    "https://nxdomain.example/h",  # resolves to nothing yet: checked at every delivery
]


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    return FakeDns(NAMES).install(monkeypatch)


def api_settings(*, allow_private: bool = False) -> Settings:
    return Settings(
        api_token=Secret(TOKEN), secret_key=Secret(KEY), hooks_allow_private_targets=allow_private
    )


def api_for(engine: Engine, settings: Settings) -> httpx.AsyncClient:
    api = HooksApi(settings, engine, known_events={"handover"})
    transport = httpx.ASGITransport(app=Starlette(routes=api.routes()))
    return httpx.AsyncClient(transport=transport, base_url="http://wacrm")


@pytest.fixture
async def api(engine: Engine, account_id: int) -> AsyncIterator[httpx.AsyncClient]:
    async with api_for(engine, api_settings()) as client:
        yield client


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store of its own for `wacrm hooks`, and no WACRM_* of the machine running tests."""
    monkeypatch.chdir(tmp_path)
    for name in ("WACRM_RULES_DIR", "WACRM_CONFIG", "WACRM_ACCOUNT_NAME", SETTING):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WACRM_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("WACRM_SECRET_KEY", KEY)
    return tmp_path


def hooks_add(url: str) -> Result:
    return CliRunner().invoke(cli, ["hooks", "add", "handover", url])


# -- subscribing -------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "host", "what"), FORBIDDEN)
async def test_given_non_public_target_when_posted_then_422_naming_host_and_why(
    api: httpx.AsyncClient, engine: Engine, account_id: int, url: str, host: str, what: str
) -> None:
    response = await api.post(
        "/api/hooks", headers=AUTH, json={"event": "handover", "target_url": url}
    )

    assert response.status_code == 422
    assert response.json() == {"error": f"target_url host {host!r} {what}; {ONLY_PUBLIC}"}
    assert list_subscriptions(engine, account_id) == []


@pytest.mark.parametrize(("url", "host", "what"), FORBIDDEN)
def test_given_non_public_target_when_added_on_cli_then_one_line_error_exit_2(
    cli_env: Path, url: str, host: str, what: str
) -> None:
    result = hooks_add(url)

    assert result.exit_code == 2
    assert result.output == f"wacrm: error: target_url host {host!r} {what}; {ONLY_PUBLIC}\n"
    assert "Traceback" not in result.output


def test_given_name_resolving_to_private_when_refused_then_address_never_shown(
    engine: Engine, account_id: int
) -> None:
    with pytest.raises(HookError) as caught:
        subscribe(engine, account_id, "*", "https://metadata.example/h", NOW, box=BOX)

    assert "169.254" not in str(caught.value)  # a caller must not map the network


async def test_given_plain_http_when_posted_then_422_asking_for_https(
    api: httpx.AsyncClient, engine: Engine, account_id: int, dns: FakeDns
) -> None:
    response = await api.post(
        "/api/hooks",
        headers=AUTH,
        json={"event": "handover", "target_url": "http://hooks.example/h"},
    )

    assert response.status_code == 422
    assert response.json()["error"].startswith("target_url must use https; plain http is only")
    assert SETTING in response.json()["error"]
    assert list_subscriptions(engine, account_id) == []


@pytest.mark.parametrize("url", ACCEPTED)
async def test_given_public_target_when_posted_then_201(
    api: httpx.AsyncClient, engine: Engine, account_id: int, url: str
) -> None:
    response = await api.post(
        "/api/hooks", headers=AUTH, json={"event": "handover", "target_url": url}
    )

    assert response.status_code == 201, response.text
    assert [s.target_url for s in list_subscriptions(engine, account_id)] == [url]


def test_given_public_name_when_added_on_cli_then_dns_asked_and_subscribed(
    cli_env: Path, dns: FakeDns
) -> None:
    result = hooks_add("https://hooks.example/catch/1/")

    assert result.exit_code == 0, result.output
    assert result.output.startswith("subscription 1: handover -> https://hooks.example/catch/1/")
    assert dns.asked == ["hooks.example"]


# -- the setting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/h", "https://[::1]/h", "https://loopback.example/h"]
)
async def test_given_private_targets_allowed_when_posted_then_201_without_asking_dns(
    engine: Engine, account_id: int, dns: FakeDns, url: str
) -> None:
    async with api_for(engine, api_settings(allow_private=True)) as client:
        response = await client.post(
            "/api/hooks", headers=AUTH, json={"event": "handover", "target_url": url}
        )

    assert response.status_code == 201, response.text
    assert dns.asked == []


def test_given_private_targets_allowed_in_environment_when_added_on_cli_then_subscribed(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SETTING, "true")

    result = hooks_add("http://127.0.0.1:8080/h")

    assert result.exit_code == 0, result.output
    assert result.output.startswith("subscription 1: handover -> http://127.0.0.1:8080/h")


def test_given_setting_in_toml_or_environment_when_loaded_then_parsed_as_boolean(
    tmp_path: Path,
) -> None:
    toml = tmp_path / "wacrm.toml"
    toml.write_text("hooks_allow_private_targets = true\n")
    none = tmp_path / "none.toml"

    def allowed(env: dict[str, str], path: Path) -> bool:
        return load_settings(env=env, toml_path=path).hooks_allow_private_targets

    assert allowed({}, none) is False  # the default
    assert allowed({}, toml) is True
    assert allowed({SETTING: "yes"}, none) is True
    assert allowed({SETTING: "off"}, toml) is False  # the environment over the file
    with pytest.raises(ConfigError, match=f"{SETTING} must be true or false, got 'maybe'"):
        load_settings(env={SETTING: "maybe"}, toml_path=none)


# -- delivering ----------------------------------------------------------------------------


class Target:
    """What the pinned requests reach (httpx.MockTransport behind PublicOnlyTransport):
    answers ``answer(request)``, 204 by default, and keeps every request."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self._answer = answer or (lambda _request: httpx.Response(204))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self._answer(request)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def guarded_worker(
    engine: Engine, clock: Clock
) -> Iterator[Callable[[Target], HookDeliveryWorker]]:
    """A worker whose client sends through the guard, to a mock target instead of a socket."""
    made: list[HookDeliveryWorker] = []

    def make(target: Target) -> HookDeliveryWorker:
        client = httpx.Client(transport=PublicOnlyTransport(httpx.MockTransport(target)))
        made.append(HookDeliveryWorker(engine, client, box=BOX, clock=clock))
        return made[-1]

    yield make
    for worker in made:
        worker.close()


def subscribed(engine: Engine, account_id: int, url: str, **kwargs: Any) -> int:
    sub = subscribe(engine, account_id, "*", url, NOW, box=BOX, **kwargs).subscription
    emit(engine, account_id)
    return sub.id


def test_given_name_rebound_to_private_after_subscribing_when_delivered_then_refused_and_retried(
    engine: Engine,
    account_id: int,
    clock: Clock,
    dns: FakeDns,
    guarded_worker: Callable[[Target], HookDeliveryWorker],
) -> None:
    sub_id = subscribed(engine, account_id, "https://hooks.example/catch/1/?k=v")
    dns.answers["hooks.example"] = ["10.0.0.7"]  # the DNS answer changed since
    target = Target()
    worker = guarded_worker(target)

    worker.run_once()

    assert target.requests == []  # nothing left the building
    [row] = deliveries(engine)
    assert (row.state, row.attempts, row.last_status) == ("pending", 1, None)
    assert row.last_error == (
        f"refused: host 'hooks.example' resolves to a private address; {ONLY_PUBLIC}"
    )
    assert row.next_attempt_at > clock.now  # tried again later, with backoff
    assert subscription_row(engine, sub_id).state == "active"

    dns.answers["hooks.example"] = [PUBLIC_IP]  # and back
    clock.now = row.next_attempt_at
    worker.run_once()

    [row] = deliveries(engine)
    assert (row.state, row.attempts, row.last_error) == ("delivered", 2, None)
    [sent] = target.requests
    # Connected to the address checked; the name kept for Host, TLS SNI and the certificate.
    assert str(sent.url) == f"https://{PUBLIC_IP}/catch/1/?k=v"
    assert sent.headers["host"] == "hooks.example"
    assert sent.extensions["sni_hostname"] == "hooks.example"


class Flipping(FakeDns):
    """A TTL-0 rebinding name: public when first asked, loopback from then on."""

    def __call__(self, host: str, port: int) -> list[IPAddress]:
        answer = super().__call__(host, port)
        self.answers[host] = ["127.0.0.1"]
        return answer


def test_given_dns_answering_differently_each_time_when_delivered_then_checked_answer_used(
    engine: Engine,
    account_id: int,
    monkeypatch: pytest.MonkeyPatch,
    guarded_worker: Callable[[Target], HookDeliveryWorker],
) -> None:
    """Public for the check, loopback for any second lookup: there is none, the connection
    goes to the address that was checked."""
    subscribed(engine, account_id, "https://flip.example/h")
    flipping = Flipping().install(monkeypatch)
    target = Target()

    guarded_worker(target).run_once()

    assert flipping.asked == ["flip.example"]  # one lookup per delivery
    assert [r.url.host for r in target.requests] == [PUBLIC_IP]
    assert [d.state for d in deliveries(engine)] == ["delivered"]


def test_given_private_address_stored_before_the_guard_when_delivered_then_dead_at_once(
    engine: Engine,
    account_id: int,
    guarded_worker: Callable[[Target], HookDeliveryWorker],
) -> None:
    sub_id = subscribed(engine, account_id, "https://10.0.0.5/h", allow_private=True)
    target = Target()

    guarded_worker(target).run_once()

    assert target.requests == []
    [row] = deliveries(engine)
    assert (row.state, row.attempts) == ("dead", 1)  # an address cannot change: no retries
    assert row.last_error == f"refused: host '10.0.0.5' is a private address; {ONLY_PUBLIC}"
    assert subscription_row(engine, sub_id).state == "active"


def test_given_first_address_refuses_connection_when_delivered_then_next_checked_one_used(
    engine: Engine,
    account_id: int,
    dns: FakeDns,
    guarded_worker: Callable[[Target], HookDeliveryWorker],
) -> None:
    dns.answers["two.example"] = ["2606:4700:4700::1111", PUBLIC_IP]
    subscribed(engine, account_id, "https://two.example/h")

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host != PUBLIC_IP:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(204)

    target = Target(answer)
    guarded_worker(target).run_once()

    assert [r.url.host for r in target.requests] == ["2606:4700:4700::1111", PUBLIC_IP]
    assert [d.state for d in deliveries(engine)] == ["delivered"]


def test_given_name_that_stopped_resolving_when_delivered_then_retried_as_connection_error(
    engine: Engine,
    account_id: int,
    dns: FakeDns,
    guarded_worker: Callable[[Target], HookDeliveryWorker],
) -> None:
    subscribed(engine, account_id, "https://gone.example/h")
    dns.answers["gone.example"] = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    target = Target()

    guarded_worker(target).run_once()

    assert target.requests == []
    [row] = deliveries(engine)
    assert (row.state, row.last_error) == ("pending", "connection failed (ConnectError)")


def test_given_redirect_to_metadata_service_when_delivered_then_not_followed(
    engine: Engine,
    account_id: int,
    dns: FakeDns,
    guarded_worker: Callable[[Target], HookDeliveryWorker],
) -> None:
    subscribed(engine, account_id, "https://hooks.example/h")
    target = Target(
        lambda _r: httpx.Response(302, headers={"Location": "http://169.254.169.254/latest/"})
    )

    guarded_worker(target).run_once()

    assert [r.url.host for r in target.requests] == [PUBLIC_IP]  # only the subscribed one
    [row] = deliveries(engine)
    assert (row.state, row.last_status) == ("dead", 302)
    assert "redirects are not followed" in row.last_error


@pytest.mark.parametrize(("allow_private", "state"), [(False, "dead"), (True, "delivered")])
def test_given_server_worker_when_target_on_loopback_then_sent_only_if_setting_on(
    engine: Engine, account_id: int, clock: Clock, allow_private: bool, state: str
) -> None:
    """The worker the server runs (from settings, its own client, real sockets)."""
    settings = Settings(secret_key=Secret(KEY), hooks_allow_private_targets=allow_private)
    with Receiver().running() as receiver:
        subscribed(engine, account_id, receiver.url("/lan"), allow_private=True)
        worker = HookDeliveryWorker.from_settings(engine, settings, clock=clock)
        try:
            worker.run_once()
        finally:
            worker.close()

    [row] = deliveries(engine)
    assert row.state == state
    if allow_private:
        assert [r.path for r in receiver.requests] == ["/lan"]
    else:
        assert receiver.requests == []
        assert row.last_error == f"refused: host '127.0.0.1' is a loopback address; {ONLY_PUBLIC}"


def test_given_name_when_delivered_over_a_real_socket_then_connected_to_checked_address(
    engine: Engine,
    account_id: int,
    clock: Clock,
    dns: FakeDns,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default client, sockets and all: a name DNS maps to the receiver's address is
    reached at that address, with the name in Host. (Loopback is taken for public here,
    as the receiver can only be on loopback.)"""
    real_problem = targets.address_problem
    monkeypatch.setattr(
        targets, "address_problem", lambda ip: None if ip.is_loopback else real_problem(ip)
    )
    dns.answers["receiver.example"] = ["127.0.0.1"]
    with Receiver().running() as receiver:
        port = httpx.URL(receiver.url()).port
        url = f"http://receiver.example:{port}/pinned"
        subscribed(engine, account_id, url, allow_private=True)  # http: subscribed as on a LAN
        settings = Settings(secret_key=Secret(KEY))  # the guard on
        worker = HookDeliveryWorker.from_settings(engine, settings, clock=clock)
        try:
            worker.run_once()
        finally:
            worker.close()

    [got] = receiver.requests
    assert (got.path, got.headers["Host"]) == ("/pinned", f"receiver.example:{port}")
    assert dns.asked == ["receiver.example"]
    assert [d.state for d in deliveries(engine)] == ["delivered"]
