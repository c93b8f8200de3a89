"""Subscription secrets at rest: stored sealed, opened to sign, and a secret that no longer
opens (key changed) ends its subscription with the reason instead of stopping the worker."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from hooks_support import BOX, NOW, Clock, FakeDns, deliveries, emit, subscription_row
from sqlalchemy import Engine, select
from starlette.applications import Starlette

from wacrm.cli import cli
from wacrm.config import Secret, Settings
from wacrm.hooks.api import HooksApi
from wacrm.hooks.delivery import SECRET_UNOPENABLE, verify
from wacrm.hooks.fanout import fan_out
from wacrm.hooks.subscriptions import list_subscriptions, subscribe
from wacrm.hooks.targets import SETTING as ALLOW
from wacrm.hooks.worker import HookDeliveryWorker
from wacrm.store import create_store_engine
from wacrm.store.accounts import ensure_account
from wacrm.store.schema import hook_subscriptions
from wacrm.store.secrets import SecretBox, generate_key

URL = "https://hooks.example/catch/1/"
NO_KEY = Settings(database_url="postgresql://wacrm@db.example/wacrm")  # no key to be had


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    """No test here asks real DNS: every name resolves to a public address."""
    return FakeDns().install(monkeypatch)


@pytest.fixture
def posts() -> list[httpx.Request]:
    return []


@pytest.fixture
def make_worker(
    engine: Engine, posts: list[httpx.Request]
) -> Iterator[Callable[[SecretBox], HookDeliveryWorker]]:
    made: list[HookDeliveryWorker] = []

    def make(box: SecretBox) -> HookDeliveryWorker:
        def answer(request: httpx.Request) -> httpx.Response:
            posts.append(request)
            return httpx.Response(204)

        client = httpx.Client(transport=httpx.MockTransport(answer))
        made.append(HookDeliveryWorker(engine, client, box=box, clock=Clock()))
        return made[-1]

    yield make
    for worker in made:
        worker.close()


def test_given_subscription_when_stored_then_column_holds_a_token_never_the_secret(
    engine: Engine, account_id: int
) -> None:
    new = subscribe(engine, account_id, "*", URL, NOW, box=BOX)
    secret = new.secret.reveal()

    with engine.connect() as conn:
        stored = conn.execute(select(hook_subscriptions.c.secret)).scalar_one()
        whole_row = str(conn.execute(select(hook_subscriptions)).one())

    assert stored != secret and secret not in stored and secret not in whole_row
    assert stored.startswith("gAAAAA")  # a Fernet token
    assert BOX.open(stored) == secret


def test_given_sealed_secret_when_delivered_then_signed_with_the_opened_secret(
    engine: Engine,
    account_id: int,
    posts: list[httpx.Request],
    make_worker: Callable[[SecretBox], HookDeliveryWorker],
) -> None:
    new = subscribe(engine, account_id, "*", URL, NOW, box=BOX)
    emit(engine, account_id)

    assert make_worker(BOX).run_once() == 1

    [sent] = posts
    signature = sent.headers["X-Wacrm-Signature"]
    timestamp = sent.headers["X-Wacrm-Timestamp"]
    assert verify(new.secret.reveal(), timestamp, sent.content, signature, now=NOW.timestamp())
    stored = subscription_row(engine, new.subscription.id).secret
    assert not verify(stored, timestamp, sent.content, signature, now=NOW.timestamp())
    assert [d.state for d in deliveries(engine)] == ["delivered"]


def _tamper(engine: Engine, sub_id: int) -> None:
    token = subscription_row(engine, sub_id).secret
    flipped = token[:30] + ("A" if token[30] != "A" else "B") + token[31:]
    with engine.begin() as conn:
        conn.execute(
            hook_subscriptions.update()
            .where(hook_subscriptions.c.id == sub_id)
            .values(secret=flipped)
        )


@pytest.mark.parametrize("cause", ["key changed", "token altered"])
def test_given_secret_that_no_longer_opens_when_delivering_then_dead_and_subscription_disabled(
    engine: Engine,
    account_id: int,
    posts: list[httpx.Request],
    make_worker: Callable[[SecretBox], HookDeliveryWorker],
    caplog: pytest.LogCaptureFixture,
    cause: str,
) -> None:
    broken = subscribe(engine, account_id, "*", URL, NOW, box=BOX).subscription
    fine = subscribe(engine, account_id, "*", "https://other.example/h", NOW, box=BOX)
    if cause == "token altered":
        _tamper(engine, broken.id)
        box = BOX
    else:  # the key was replaced; `fine` was re-sealed under the new one, `broken` was not
        new_key = generate_key()
        box = SecretBox([new_key])
        with engine.begin() as conn:
            conn.execute(
                hook_subscriptions.update()
                .where(hook_subscriptions.c.id == fine.subscription.id)
                .values(secret=box.seal(fine.secret.reveal()))
            )
    emit(engine, account_id)
    worker = make_worker(box)

    with caplog.at_level(logging.WARNING):
        assert worker.run_once() == 1  # the other subscription is still served

    assert [str(r.url) for r in posts] == ["https://other.example/h"]
    by_sub = {d.subscription_id: d for d in deliveries(engine)}
    dead = by_sub[broken.id]
    assert (dead.state, dead.last_error, dead.attempts) == ("dead", SECRET_UNOPENABLE, 0)
    assert by_sub[fine.subscription.id].state == "delivered"
    row = subscription_row(engine, broken.id)
    assert (row.state, row.disabled_reason) == ("disabled", SECRET_UNOPENABLE)
    assert SECRET_UNOPENABLE == "secret cannot be opened (key changed?)"
    assert f"hook subscription {broken.id} disabled: {SECRET_UNOPENABLE}" in caplog.text
    assert row.secret not in caplog.text and URL not in caplog.text
    # Later events go to the working subscription only; the worker keeps going.
    emit(engine, account_id)
    worker.wake()  # as the inbox processor does after rules emitted
    assert worker.run_once() == 1
    assert len(posts) == 2


def test_given_no_key_to_be_had_when_worker_runs_then_deliveries_wait_and_one_error_logged(
    engine: Engine,
    account_id: int,
    posts: list[httpx.Request],
    make_worker: Callable[[SecretBox], HookDeliveryWorker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sub = subscribe(engine, account_id, "*", URL, NOW, box=BOX).subscription
    emit(engine, account_id)
    worker = make_worker(SecretBox.from_settings(NO_KEY))

    with caplog.at_level(logging.WARNING):
        assert worker.run_once() == 0
        assert worker.run_once() == 0

    assert posts == []
    [waiting] = deliveries(engine)
    assert (waiting.state, waiting.attempts) == ("pending", 0)  # not leased, not lost
    assert subscription_row(engine, sub.id).state == "active"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "set WACRM_SECRET_KEY" in errors[0]
    assert "Traceback" not in caplog.text


@pytest.fixture
async def no_key_api(engine: Engine, account_id: int) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        database_url=NO_KEY.database_url, api_token=Secret("t0ken-for-tests-0123456789")
    )
    api = HooksApi(settings, engine, known_events={"handover"})
    transport = httpx.ASGITransport(app=Starlette(routes=api.routes()))
    async with httpx.AsyncClient(transport=transport, base_url="http://wacrm") as client:
        yield client


async def test_given_no_key_to_be_had_when_subscribing_over_api_then_503_and_nothing_stored(
    no_key_api: httpx.AsyncClient,
    engine: Engine,
    account_id: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="wacrm.hooks.api"):
        response = await no_key_api.post(
            "/api/hooks",
            json={"event": "handover", "target_url": URL},
            headers={"Authorization": "Bearer t0ken-for-tests-0123456789"},
        )

    assert response.status_code == 503
    assert "WACRM_SECRET_KEY" in response.json()["error"]
    assert "set WACRM_SECRET_KEY" in caplog.text  # the admin's details are in the log
    assert list_subscriptions(engine, account_id) == []


def test_given_key_changed_when_hooks_listed_then_disabled_with_reason_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("WACRM_RULES_DIR", "WACRM_CONFIG", "WACRM_ACCOUNT_NAME", ALLOW):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("WACRM_DATABASE_URL", url)
    monkeypatch.setenv("WACRM_SECRET_KEY", generate_key())
    assert CliRunner().invoke(cli, ["hooks", "add", "handover", URL]).exit_code == 0
    engine = create_store_engine(url)
    try:
        emit(engine, ensure_account(engine, "default"), "handover")
        fan_out(engine, NOW)
        # The admin replaced the key without keeping the old one.
        worker = HookDeliveryWorker(
            engine, httpx.Client(), box=SecretBox([generate_key()]), clock=Clock()
        )
        try:
            assert worker.run_once() == 0
        finally:
            worker.close()
    finally:
        engine.dispose()

    listed = CliRunner().invoke(cli, ["hooks", "list"])
    dead = CliRunner().invoke(cli, ["hooks", "deliveries", "--state", "dead"])

    assert listed.output == f"1\tdisabled ({SECRET_UNOPENABLE})\thandover\t{URL}\n"
    assert dead.output.rstrip().endswith(f"\t{SECRET_UNOPENABLE}")


def test_given_no_key_set_when_added_on_sqlite_then_key_file_made_beside_store_and_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in (
        "WACRM_RULES_DIR",
        "WACRM_CONFIG",
        "WACRM_ACCOUNT_NAME",
        "WACRM_SECRET_KEY",
        ALLOW,
    ):
        monkeypatch.delenv(name, raising=False)
    store = tmp_path / "data" / "wacrm.db"
    store.parent.mkdir()
    monkeypatch.setenv("WACRM_DATABASE_URL", f"sqlite:///{store}")

    added = CliRunner().invoke(cli, ["hooks", "add", "handover", URL])

    assert added.exit_code == 0, added.output
    secret = added.output.splitlines()[1].removeprefix("secret: ")
    key = (tmp_path / "data" / "wacrm.key").read_text().strip()
    assert secret.encode() not in store.read_bytes()
    engine = create_store_engine(f"sqlite:///{store}")
    try:
        with engine.connect() as conn:
            stored = conn.execute(select(hook_subscriptions.c.secret)).scalar_one()
    finally:
        engine.dispose()
    assert SecretBox([key]).open(stored) == secret


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WACRM_SECRET_KEY": "bad-key-123"}, "WACRM_SECRET_KEY: key 1 of 1 is not a Fernet key"),
        (
            {"WACRM_DATABASE_URL": NO_KEY.database_url},
            "set WACRM_SECRET_KEY: stored secrets are sealed with it",
        ),
    ],
)
def test_given_unusable_key_when_added_then_one_line_error_exit_2_and_nothing_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in (
        "WACRM_RULES_DIR",
        "WACRM_CONFIG",
        "WACRM_ACCOUNT_NAME",
        "WACRM_SECRET_KEY",
        ALLOW,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WACRM_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    result = CliRunner().invoke(cli, ["hooks", "add", "handover", URL])

    assert result.exit_code == 2
    assert result.output.startswith("wacrm: error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "bad-key-123" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "cli.db").exists()  # failed before the store was touched
