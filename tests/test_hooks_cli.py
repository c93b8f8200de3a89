"""`wacrm hooks add|list|remove|deliveries|retry`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result
from hooks_support import NOW, FakeDns, deliveries, emit
from sqlalchemy import Engine

from wacrm.cli import cli
from wacrm.hooks.fanout import fan_out
from wacrm.hooks.targets import SETTING as ALLOW
from wacrm.store import create_store_engine
from wacrm.store.accounts import ensure_account
from wacrm.store.schema import hook_deliveries

URL = "https://hooks.example/catch/1/"


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    """No test here asks real DNS: every name resolves to a public address."""
    return FakeDns().install(monkeypatch)


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    # No wacrm.toml or WACRM_* from the machine running the tests.
    monkeypatch.chdir(tmp_path)
    for name in (
        "WACRM_RULES_DIR",
        "WACRM_CONFIG",
        "WACRM_ACCOUNT_NAME",
        "WACRM_SECRET_KEY",
        ALLOW,
    ):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("WACRM_DATABASE_URL", url)
    engine = create_store_engine(url)
    yield engine
    engine.dispose()


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["hooks", *args])


def test_given_event_and_url_when_added_then_secret_shown_once_and_listed_without(
    db: Engine,
) -> None:
    added = run("add", "handover", URL)

    assert added.exit_code == 0, added.output
    lines = added.output.splitlines()
    assert lines[0] == f"subscription 1: handover -> {URL}"
    secret = lines[1].removeprefix("secret: ")
    assert len(secret) == 64
    listed = run("list")
    assert listed.output == f"1\tactive\thandover\t{URL}\n"
    as_json = orjson.loads(run("list", "--json").output)
    assert [(h["id"], h["event"], h["target_url"]) for h in as_json["hooks"]] == [
        (1, "handover", URL)
    ]
    assert secret not in listed.output + run("list", "--json").output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "handover", "ftp://x.example/h"), "target_url must use http or https"),
        (("add", "Order!", URL), "event 'Order!' is not an event name"),
        (("add", "order.shipped", URL), "no loaded rule emits event 'order.shipped'"),
        (("remove", "abc"), "subscription ID must be a whole number, got 'abc'"),
        (("remove", "7"), "no subscription 7"),
        (("deliveries", "--state", "lost"), "--state must be one of pending, delivered, dead"),
        (("deliveries", "--limit", "x"), "--limit must be a whole number, got 'x'"),
        (("retry",), "give a delivery ID or --dead (not both)"),
        (("retry", "3", "--dead"), "give a delivery ID or --dead (not both)"),
        (("retry", "3"), "delivery 3 is not a dead delivery of an active subscription"),
    ],
)
def test_given_mistake_when_run_then_one_line_error_exit_2(
    db: Engine, args: tuple[str, ...], message: str
) -> None:
    result = run(*args)

    assert result.exit_code == 2
    assert result.output.startswith("wacrm: error: ")
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_given_credentials_in_url_when_added_then_refused_without_echoing_them(
    db: Engine,
) -> None:
    result = run("add", "handover", "https://me:hunter2@x.example/h")

    assert result.exit_code == 2
    assert "hunter2" not in result.output


def test_given_subscription_when_removed_then_gone(db: Engine) -> None:
    run("add", "*", URL)

    result = run("remove", "1")

    assert (result.exit_code, result.output) == (0, "subscription 1 removed\n")
    assert run("list").output == "no subscriptions\n"


def test_given_dead_deliveries_when_listed_and_retried_then_queued_again(db: Engine) -> None:
    run("add", "*", URL)
    account = ensure_account(db, "default")
    first, second = emit(db, account, "handover"), emit(db, account, "handover")
    fan_out(db, NOW)
    with db.begin() as conn:
        conn.execute(
            hook_deliveries.update().values(
                state="dead", attempts=10, last_status=503, last_error="HTTP 503"
            )
        )

    dead = run("deliveries", "--state", "dead")
    as_json = orjson.loads(run("deliveries", "--json").output)
    one = run("retry", "1")
    rest = run("retry", "--dead")

    assert dead.exit_code == 0
    assert dead.output.splitlines() == [
        f"2\tdead\tsubscription 1\tevent {second} handover\tattempts 10\tstatus 503\tHTTP 503",
        f"1\tdead\tsubscription 1\tevent {first} handover\tattempts 10\tstatus 503\tHTTP 503",
    ]
    assert [d["state"] for d in as_json["deliveries"]] == ["dead", "dead"]
    assert (one.exit_code, one.output) == (0, "1 dead delivery queued again\n")
    assert (rest.exit_code, rest.output) == (0, "1 dead delivery queued again\n")
    assert [(d.state, d.attempts) for d in deliveries(db)] == [("pending", 0), ("pending", 0)]
    assert run("deliveries", "--state", "dead").output == "no deliveries\n"
