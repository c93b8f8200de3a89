"""Sending one message now: ``send_now`` and the ``wacrm send`` command (against the
sandbox in process, and on loopback for the command)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from conftest import PHONE_NUMBER_ID
from sqlalchemy import Engine
from whatsapp_support import (
    ALICE,
    BOB,
    TOKEN,
    Clock,
    Graph,
    add_contact,
    make_sandbox,
    message_row,
    over_asgi,
)

from wacrm.cli import cli
from wacrm.config import Settings
from wacrm.sandbox.whatsapp import SandboxConfig, WhatsAppSandbox
from wacrm.store import create_store_engine, migrate
from wacrm.store.accounts import ensure_account
from wacrm.store.schema import contacts
from wacrm.whatsapp.meta_bodies import text_message
from wacrm.whatsapp.meta_send import CloudApiClient
from wacrm.workers.whatsapp_send import build_body, recipient_e164, send_now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def alice(engine: Engine, account_id: int, clock: Clock) -> int:
    """A contact who wrote an hour ago: the 24 h window is open."""
    return add_contact(engine, account_id, ALICE, clock.now - timedelta(hours=1))


# --- send now (``wacrm send``, phase 2) ------------------------------------------------------


def test_given_template_when_send_now_then_stored_sent_and_wamid_returned(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    sandbox = make_sandbox(clock)
    settings = Settings(whatsapp_phone_number_id=PHONE_NUMBER_ID)
    client = CloudApiClient(
        base_url="http://sandbox.test", version="v25.0", access_token=TOKEN, http=over_asgi(sandbox)
    )
    body, text = build_body(
        BOB, client=client, phone_number_id=PHONE_NUMBER_ID, template="hello", params=["Ana"]
    )

    outcome = send_now(
        engine,
        settings,
        client,
        body,
        account_id=account_id,
        text=text,
        clock=clock,
        sleep=clock.sleep,
    )

    assert outcome.state == "sent"
    assert outcome.provider_message_id == sandbox.sent[0].wamid
    message = message_row(engine, outcome.message_id)
    assert (message.type, message.text, message.rule) == ("template", "[template hello]", "cli")


def test_given_free_text_to_cold_number_when_send_now_then_refused_locally(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    sandbox = make_sandbox(clock)
    client = CloudApiClient(
        base_url="http://sandbox.test", version="v25.0", access_token=TOKEN, http=over_asgi(sandbox)
    )
    body, text = build_body(BOB, client=client, phone_number_id=PHONE_NUMBER_ID, text="Hi")

    outcome = send_now(
        engine,
        Settings(whatsapp_phone_number_id=PHONE_NUMBER_ID),
        client,
        body,
        account_id=account_id,
        text=text,
        clock=clock,
        sleep=clock.sleep,
    )

    assert (outcome.state, outcome.provider_message_id) == ("failed", None)
    assert outcome.error and "131047" in outcome.error
    assert sandbox.sent == []


def test_given_retrying_send_when_timeout_passes_then_returns_pending(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    graph = Graph(*[httpx.Response(503) for _ in range(20)])
    client = CloudApiClient(
        base_url="http://graph.test", version="v25.0", access_token=TOKEN, http=graph.client()
    )

    outcome = send_now(
        engine,
        Settings(whatsapp_phone_number_id=PHONE_NUMBER_ID),
        client,
        text_message(ALICE, "Hi"),
        account_id=account_id,
        timeout=10,
        clock=clock,
        sleep=clock.sleep,
    )

    assert outcome.state == "pending"
    assert outcome.error and "HTTP 503" in outcome.error
    assert 2 <= len(graph.bodies) <= 5  # backoff 1 s, 2 s, 4 s… within 10 s


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"text": "a", "template": "b"}, "exactly one"),
        ({"media": "/no/such/file.png"}, "no such file"),
    ],
)
def test_given_bad_send_arguments_when_building_then_value_error(
    kwargs: dict[str, Any], message: str
) -> None:
    client = CloudApiClient(base_url="http://x.test", version="v25.0", http=httpx.Client())

    with pytest.raises(ValueError, match=message):
        build_body(ALICE, client=client, phone_number_id=PHONE_NUMBER_ID, **kwargs)


def test_given_media_url_when_building_then_link_with_kind_from_extension() -> None:
    client = CloudApiClient(base_url="http://x.test", version="v25.0", http=httpx.Client())

    body, _ = build_body(
        ALICE, client=client, phone_number_id=PHONE_NUMBER_ID, media="https://x.test/q.pdf?a=1"
    )

    assert body["type"] == "document"
    assert body["document"] == {"link": "https://x.test/q.pdf?a=1", "filename": "q.pdf"}


# --- the ``wacrm send`` command against a sandbox on loopback --------------------------------


@pytest.fixture
def loopback_sandbox() -> Iterator[tuple[str, WhatsAppSandbox]]:
    import socket

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sandbox = WhatsAppSandbox(  # real clock: the CLI runs in real time
        SandboxConfig(
            access_token=TOKEN, app_secret="secret", phone_numbers={PHONE_NUMBER_ID: "15550783881"}
        )
    )
    server = uvicorn.Server(
        uvicorn.Config(sandbox.app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", sandbox
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_given_sandbox_when_wacrm_send_then_prints_wamid_and_export_shows_message(
    loopback_sandbox: tuple[str, WhatsAppSandbox], tmp_path: Path
) -> None:
    base_url, sandbox = loopback_sandbox
    env = {
        "WACRM_CONFIG": str(tmp_path / "none.toml"),
        "WACRM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "WACRM_WHATSAPP_API_BASE_URL": base_url,
        "WACRM_WHATSAPP_ACCESS_TOKEN": TOKEN,
        "WACRM_WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
    }
    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    runner = CliRunner()

    template = runner.invoke(
        cli, ["send", "--to", BOB, "--template", "hello", "--param", "Ana"], env=env
    )
    store = create_store_engine(env["WACRM_DATABASE_URL"])
    add_contact(store, 1, ALICE, datetime.now(UTC) - timedelta(minutes=5))  # Alice wrote
    store.dispose()
    media = runner.invoke(cli, ["send", "--to", ALICE, "--media", str(image)], env=env)
    free_text = runner.invoke(cli, ["send", "--to", BOB, "--text", "Hi"], env=env)
    export = runner.invoke(cli, ["export", "messages"], env=env)

    assert template.exit_code == 0, template.output
    assert template.output.strip() == sandbox.sent[0].wamid
    assert media.exit_code == 0, media.output
    assert sandbox.sent[1].type == "image" and "id" in sandbox.sent[1].body["image"]
    assert free_text.exit_code == 1
    assert "131047" in free_text.output
    assert TOKEN not in template.output + media.output + free_text.output + export.output
    exported = [json.loads(line) for line in export.output.splitlines()]
    assert {m.get("provider_message_id") for m in exported} >= {s.wamid for s in sandbox.sent}


def test_given_no_phone_number_id_when_wacrm_send_then_usage_error(tmp_path: Path) -> None:
    env = {
        "WACRM_CONFIG": str(tmp_path / "none.toml"),
        "WACRM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "WACRM_WHATSAPP_ACCESS_TOKEN": TOKEN,
        "WACRM_WHATSAPP_PHONE_NUMBER_ID": "",
    }

    result = CliRunner().invoke(cli, ["send", "--to", BOB, "--text", "Hi"], env=env)

    assert result.exit_code == 2
    assert "WACRM_WHATSAPP_PHONE_NUMBER_ID" in result.output


def _cli_env(tmp_path: Path, base_url: str) -> dict[str, str]:
    return {
        "WACRM_CONFIG": str(tmp_path / "none.toml"),
        "WACRM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "WACRM_WHATSAPP_API_BASE_URL": base_url,
        "WACRM_WHATSAPP_ACCESS_TOKEN": TOKEN,
        "WACRM_WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
    }


def test_given_contact_prefers_portuguese_when_wacrm_send_template_then_sent_in_pt_br(
    loopback_sandbox: tuple[str, WhatsAppSandbox], tmp_path: Path
) -> None:
    base_url, sandbox = loopback_sandbox
    env = _cli_env(tmp_path, base_url)
    runner = CliRunner()
    store = create_store_engine(env["WACRM_DATABASE_URL"])
    migrate(store)
    contact = add_contact(store, ensure_account(store, "default"), ALICE, None)
    with store.begin() as conn:
        conn.execute(contacts.update().where(contacts.c.id == contact).values(language="pt"))
    store.dispose()

    chosen = runner.invoke(cli, ["send", "--to", ALICE, "--template", "order_update"], env=env)
    explicit = runner.invoke(
        cli, ["send", "--to", ALICE, "--template", "order_update", "--lang", "es"], env=env
    )
    unknown = runner.invoke(cli, ["send", "--to", BOB, "--template", "order_update"], env=env)

    assert chosen.exit_code == explicit.exit_code == unknown.exit_code == 0, chosen.output
    languages = [s.body["template"]["language"]["code"] for s in sandbox.sent]
    assert languages == ["pt_BR", "es", "en_US"]
    assert "template language pt_BR (the contact's preference)" in chosen.output


@pytest.mark.parametrize(
    ("to", "reason"),
    [
        ("+1650555", "+1650555: too short for country code +1"),
        ("+999123456789", "unknown country code"),
        ("07700 900123", "add the country code"),
    ],
)
def test_given_not_a_phone_number_when_wacrm_send_then_one_line_naming_it_exit_2(
    loopback_sandbox: tuple[str, WhatsAppSandbox], tmp_path: Path, to: str, reason: str
) -> None:
    base_url, sandbox = loopback_sandbox

    result = CliRunner().invoke(
        cli, ["send", "--to", to, "--text", "Hi"], env=_cli_env(tmp_path, base_url)
    )

    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"wacrm: error: --to {to}") and reason in line
    assert sandbox.sent == []


def test_given_national_format_with_trunk_zero_when_normalised_then_the_right_number() -> None:
    # A regex would keep the (0): +4402079460018, somebody else's number.
    assert recipient_e164("+44 (0)20 7946 0018") == "+442079460018"
    assert recipient_e164("16505551234") == ALICE  # a WhatsApp id: digits, country first
    assert recipient_e164("020 7946 0018", "GB") == "+442079460018"


@pytest.mark.parametrize(
    ("name", "size", "code"),
    [("huge.jpg", 6 * 1024 * 1024, "media-too-large"), ("anim.gif", 1024, "media-type")],
)
def test_given_media_meta_would_refuse_when_wacrm_send_then_refused_before_upload(
    loopback_sandbox: tuple[str, WhatsAppSandbox], tmp_path: Path, name: str, size: int, code: str
) -> None:
    base_url, sandbox = loopback_sandbox
    path = tmp_path / name
    with path.open("wb") as fh:
        fh.truncate(size)

    result = CliRunner().invoke(
        cli, ["send", "--to", ALICE, "--media", str(path)], env=_cli_env(tmp_path, base_url)
    )

    assert result.exit_code == 2, result.output
    assert "refused by the content policy" in result.output and code in result.output
    assert sandbox.media._media == {}  # nothing uploaded
    assert sandbox.sent == []


def test_given_api_unreachable_when_wacrm_send_then_one_line_naming_the_host_and_kept_queued(
    tmp_path: Path,
) -> None:
    env = _cli_env(tmp_path, "http://127.0.0.1:9")  # nothing listens on the discard port

    result = CliRunner().invoke(
        cli, ["send", "--to", BOB, "--template", "hello", "--timeout", "1"], env=env
    )

    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert "No answer from the Cloud API at 127.0.0.1" in line and "stays queued" in line
    assert TOKEN not in result.output
