"""Secrets at rest (wacrm/store/secrets.py): sealing, tampering, rotation, and where the key
comes from (WACRM_SECRET_KEY, else a key file beside a SQLite store, made once, mode 0600)."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from wacrm.config import ConfigError, Secret, Settings, load_settings
from wacrm.store.secrets import (
    SecretBox,
    SecretError,
    generate_key,
    key_file_for,
    parse_keys,
    read_or_create_key_file,
)

PLAINTEXT = "9f2c4e1a7b3d5f60a1b2c3d4e5f60718293a4b5c6d7e8f901a2b3c4d5e6f7081"


def test_given_secret_when_sealed_then_token_hides_it_and_opens_back_to_it() -> None:
    box = SecretBox([generate_key()])

    token = box.seal(PLAINTEXT)
    again = box.seal(PLAINTEXT)

    assert PLAINTEXT not in token
    assert token != again  # a fresh IV each time: equal secrets do not look equal
    assert box.open(token) == PLAINTEXT and box.open(again) == PLAINTEXT
    assert token.startswith("gAAAAA")  # Fernet version byte 0x80, url-safe base64
    assert box.open(box.seal("ünïcode ✓")) == "ünïcode ✓"


def _flip(token: str, at: int) -> str:
    swapped = "A" if token[at] != "A" else "B"
    return token[:at] + swapped + token[at + 1 :]


@pytest.mark.parametrize("where", ["version", "iv", "ciphertext", "hmac"])
def test_given_tampered_token_when_opened_then_secret_error_without_token_or_plaintext(
    where: str,
) -> None:
    box = SecretBox([generate_key()])
    token = box.seal(PLAINTEXT)
    at = {"version": 0, "iv": 20, "ciphertext": len(token) // 2, "hmac": len(token) - 5}[where]
    tampered = _flip(token, at)

    with pytest.raises(SecretError) as caught:
        box.open(tampered)

    message = str(caught.value)
    assert "does not open" in message and "WACRM_SECRET_KEY" in message
    assert tampered not in message and token not in message and PLAINTEXT not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize("token", ["", "not a token", "gAAAAA" + "x" * 60, "ünïcode"])
def test_given_garbage_when_opened_then_secret_error(token: str) -> None:
    with pytest.raises(SecretError):
        SecretBox([generate_key()]).open(token)


def test_given_token_of_another_key_when_opened_then_secret_error() -> None:
    foreign = SecretBox([generate_key()]).seal(PLAINTEXT)

    with pytest.raises(SecretError):
        SecretBox([generate_key()]).open(foreign)


def test_given_new_key_first_when_rotating_then_old_tokens_open_and_reseal_under_new() -> None:
    old, new = generate_key(), generate_key()
    token = SecretBox([old]).seal(PLAINTEXT)
    both = SecretBox(f"{new}, {old}")  # comma-separated text, as WACRM_SECRET_KEY holds it

    assert both.open(token) == PLAINTEXT  # the old key still opens
    assert not both.is_current(token)
    rotated = both.rotate(token)
    assert both.is_current(rotated) and both.open(rotated) == PLAINTEXT
    assert both.seal(PLAINTEXT) and both.is_current(both.seal(PLAINTEXT))  # seals under new

    # Once re-sealed, the new key alone is enough, and the old key alone no longer opens it.
    assert SecretBox([new]).open(rotated) == PLAINTEXT
    with pytest.raises(SecretError):
        SecretBox([old]).open(rotated)
    with pytest.raises(SecretError):
        SecretBox([new]).open(token)  # dropping the old key before rotating loses the token
    with pytest.raises(SecretError):
        SecretBox([new]).rotate(token)


@pytest.mark.parametrize(
    ("raw", "position"),
    [
        ("not-a-key", "key 1 of 1"),
        ("c2hvcnQ=", "key 1 of 1"),  # valid base64, 5 bytes
        (f"{Fernet.generate_key().decode()},Zm9vYmFy!!", "key 2 of 2"),
        ("ünïcode-key-ünïcode-key-ünïcode-key-ünïcode", "key 1 of 1"),
    ],
)
def test_given_malformed_key_when_loaded_then_config_error_names_setting_not_key(
    raw: str, position: str, tmp_path: Path
) -> None:
    settings = load_settings(env={"WACRM_SECRET_KEY": raw}, toml_path=tmp_path / "none.toml")
    box = SecretBox.from_settings(settings)

    with pytest.raises(ConfigError) as caught:
        box.seal(PLAINTEXT)

    message = str(caught.value)
    assert message.startswith("WACRM_SECRET_KEY: ") and position in message
    assert "wacrm secrets keygen" in message
    for part in raw.split(","):
        assert part not in message
    assert repr(settings.secret_key) == "Secret('***')"


def test_given_only_commas_when_parsed_then_config_error() -> None:
    with pytest.raises(ConfigError, match="WACRM_SECRET_KEY holds no key"):
        parse_keys(" , ,")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://wacrm@db.example/wacrm",
        "postgresql+psycopg://wacrm@db.example/wacrm",
        "sqlite://",
        "sqlite:///:memory:",
    ],
)
def test_given_no_key_and_no_sqlite_file_when_sealing_then_config_error_names_setting(
    url: str,
) -> None:
    box = SecretBox.from_settings(Settings(database_url=url))

    with pytest.raises(ConfigError) as caught:
        box.seal(PLAINTEXT)
    with pytest.raises(ConfigError):
        box.open("gAAAAA")

    assert str(caught.value).startswith("set WACRM_SECRET_KEY")


def test_given_store_in_missing_directory_when_sealing_then_config_error_and_nothing_made(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nowhere"
    box = SecretBox.from_settings(Settings(database_url=f"sqlite:///{missing / 'wacrm.db'}"))

    with pytest.raises(ConfigError, match=r"^set WACRM_SECRET_KEY: the key file .* cannot be made"):
        box.seal(PLAINTEXT)
    assert not missing.exists()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///data/wacrm.db", Path("data/wacrm.key")),
        ("sqlite:////var/lib/wacrm/store.sqlite3", Path("/var/lib/wacrm/store.key")),
        ("sqlite+pysqlite:///wacrm.db", Path("wacrm.key")),
        ("sqlite:///odd.key", Path("odd.key.key")),  # never the store file itself
        ("postgresql://u@h/db", None),
        ("sqlite://", None),
        ("not a url", None),
    ],
)
def test_given_database_url_when_asked_then_key_file_beside_sqlite_store_only(
    url: str, expected: Path | None
) -> None:
    assert key_file_for(url) == expected


def test_given_sqlite_store_and_no_key_when_first_needed_then_key_file_made_once_0600(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'wacrm.db'}")
    key_file = tmp_path / "wacrm.key"
    box = SecretBox.from_settings(settings)
    assert not key_file.exists()  # making the box reads and writes nothing

    with caplog.at_level(logging.WARNING, logger="wacrm.store.secrets"):
        token = box.seal(PLAINTEXT)
        # Another process (a fresh box) later: the same file, the same key, no new warning.
        later = SecretBox.from_settings(settings)
        assert later.open(token) == PLAINTEXT

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert Fernet(key)  # one well-formed key
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert str(key_file) in warnings[0] and "back it up" in warnings[0]
    assert key not in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wacrm.key"]  # no temp file left


def test_given_key_in_setting_when_key_file_exists_too_then_setting_wins(tmp_path: Path) -> None:
    (tmp_path / "wacrm.key").write_text(generate_key() + "\n")
    key = generate_key()
    url = f"sqlite:///{tmp_path / 'wacrm.db'}"

    token = SecretBox.from_settings(Settings(database_url=url, secret_key=Secret(key))).seal("x")

    assert SecretBox([key]).open(token) == "x"


def test_given_key_file_with_new_and_old_key_when_opening_then_both_work(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    (tmp_path / "wacrm.key").write_text(f"{new}\n{old}\n")
    box = SecretBox.from_settings(Settings(database_url=f"sqlite:///{tmp_path / 'wacrm.db'}"))

    assert box.open(SecretBox([old]).seal("x")) == "x"
    assert SecretBox([new]).open(box.seal("y")) == "y"


def test_given_malformed_key_file_when_loaded_then_config_error_names_file_and_setting(
    tmp_path: Path,
) -> None:
    (tmp_path / "wacrm.key").write_text("garbage-key-material\n")
    box = SecretBox.from_settings(Settings(database_url=f"sqlite:///{tmp_path / 'wacrm.db'}"))

    with pytest.raises(ConfigError) as caught:
        box.ready()

    message = str(caught.value)
    assert "WACRM_SECRET_KEY" in message and str(tmp_path / "wacrm.key") in message
    assert "garbage-key-material" not in message


def test_given_another_process_creates_the_file_first_when_linking_then_its_key_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "wacrm.key"
    theirs = generate_key()
    real_link = os.link

    def lose_the_race(src: Path, dst: Path) -> None:
        path.write_text(theirs + "\n")  # the other process, just before our link
        real_link(src, dst)

    monkeypatch.setattr("wacrm.store.secrets.os.link", lose_the_race)

    with caplog.at_level(logging.WARNING, logger="wacrm.store.secrets"):
        assert read_or_create_key_file(path).strip() == theirs

    assert caplog.records == []  # only the process that made the file warns
    assert [p.name for p in tmp_path.iterdir()] == ["wacrm.key"]


def test_given_many_threads_racing_when_creating_key_file_then_all_agree(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "wacrm.key"
    start = threading.Barrier(16)
    got: list[str] = []

    def create() -> None:
        start.wait()
        got.append(read_or_create_key_file(path))

    with caplog.at_level(logging.WARNING, logger="wacrm.store.secrets"):
        threads = [threading.Thread(target=create) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    assert len(got) == 16 and len(set(got)) == 1
    assert got[0] == path.read_text()
    assert len(caplog.records) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["wacrm.key"]


_RACER = """
import sys, time
from pathlib import Path
from wacrm.store.secrets import read_or_create_key_file
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(read_or_create_key_file(Path(sys.argv[1])).strip())
"""


def test_given_processes_starting_together_when_creating_key_file_then_all_agree(
    tmp_path: Path,
) -> None:
    path = tmp_path / "wacrm.key"
    go = time.time() + 3.0  # every process imported and waiting by then
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(path), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outputs = [r.communicate(timeout=60) for r in racers]

    assert all(r.returncode == 0 for r in racers), [err for _, err in outputs]
    keys = {out.strip() for out, _ in outputs}
    assert keys == {path.read_text().strip()}
    # Exactly one process made the file, and only it told the admin to back it up.
    assert sum("back it up" in err for _, err in outputs) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_given_box_when_shown_then_no_key_in_repr() -> None:
    key = generate_key()

    assert key not in repr(SecretBox([key])) and key not in str(SecretBox([key]))
