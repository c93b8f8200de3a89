"""`wacrm secrets keygen|rotate`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet
from sqlalchemy import Engine, select

from wacrm.cli import cli
from wacrm.store import create_store_engine
from wacrm.store.schema import hook_subscriptions
from wacrm.store.secrets import SecretBox, SecretError, generate_key

URL = "https://hooks.example/catch/1/"


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.chdir(tmp_path)
    for name in ("WACRM_RULES_DIR", "WACRM_CONFIG", "WACRM_ACCOUNT_NAME", "WACRM_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("WACRM_DATABASE_URL", url)
    engine = create_store_engine(url)
    yield engine
    engine.dispose()


def run(*args: str, key: str | None = None) -> Result:
    env = {"WACRM_SECRET_KEY": key} if key is not None else {}
    return CliRunner().invoke(cli, ["secrets", *args], env=env)


def add_hook(key: str) -> str:
    """Subscribe through the CLI with ``key``; the secret it shows once."""
    added = CliRunner().invoke(cli, ["hooks", "add", "*", URL], env={"WACRM_SECRET_KEY": key})
    assert added.exit_code == 0, added.output
    return added.output.splitlines()[1].removeprefix("secret: ")


def stored(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(select(hook_subscriptions.c.secret).order_by(hook_subscriptions.c.id))
            .scalars()
            .all()
        )


def test_given_keygen_when_run_then_prints_one_fresh_fernet_key() -> None:
    first, second = run("keygen"), run("keygen")

    assert first.exit_code == 0 and second.exit_code == 0
    key = first.output.strip()
    assert first.output == key + "\n"
    assert Fernet(key) and key != second.output.strip()


def test_given_new_key_first_when_rotated_then_every_secret_resealed_and_old_key_can_go(
    db: Engine,
) -> None:
    old, new = generate_key(), generate_key()
    secrets = [add_hook(old), add_hook(old)]
    before = stored(db)

    rotated = run("rotate", key=f"{new},{old}")
    again = run("rotate", key=f"{new},{old}")

    assert rotated.exit_code == 0, rotated.output
    assert rotated.output == "2 secret(s) re-sealed under the newest key; 0 already were\n"
    assert again.output == "0 secret(s) re-sealed under the newest key; 2 already were\n"
    after = stored(db)
    assert after != before
    assert [SecretBox([new]).open(token) for token in after] == secrets
    for token in after:
        with pytest.raises(SecretError):
            SecretBox([old]).open(token)
    assert run("rotate", key=new).output.startswith("0 secret(s) re-sealed")


def test_given_secret_no_key_opens_when_rotated_then_others_resealed_and_exit_2_naming_it(
    db: Engine,
) -> None:
    lost, current = generate_key(), generate_key()
    add_hook(lost)
    add_hook(current)
    new = generate_key()

    result = run("rotate", key=f"{new},{current}")

    assert result.exit_code == 2
    first, error = result.output.splitlines()
    assert first == "1 secret(s) re-sealed under the newest key; 0 already were"
    assert error.startswith("wacrm: error: 1 stored secret(s) open with no configured key")
    assert "(hook_subscriptions 1)" in error and "Traceback" not in result.output
    unopened, resealed = stored(db)
    assert SecretBox([lost]).open(unopened)  # left as it was
    assert SecretBox([new]).is_current(resealed)


def test_given_malformed_key_when_rotating_then_one_line_error_without_the_key(
    db: Engine,
) -> None:
    result = run("rotate", key=f"{generate_key()},secret-material-0123")

    assert result.exit_code == 2
    assert result.output.startswith("wacrm: error: WACRM_SECRET_KEY: key 2 of 2 is not a Fernet")
    assert len(result.output.strip().splitlines()) == 1
    assert "secret-material-0123" not in result.output


def test_given_postgresql_and_no_key_when_rotating_then_one_line_error_naming_setting(
    db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WACRM_DATABASE_URL", "postgresql://wacrm@db.example/wacrm")

    result = run("rotate")

    assert result.exit_code == 2
    assert result.output.startswith("wacrm: error: set WACRM_SECRET_KEY")
    assert "Traceback" not in result.output
