"""``wacrm send`` through Twilio (the Twilio sandbox on loopback), its statuses arriving by
signed callback and showing in ``wacrm export messages``, and the configuration mistakes
that end as one line and exit status 2."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from click.testing import CliRunner
from test_server_webhooks import serving, settings_for_tests
from whatsapp_support import ALICE, BOB, add_contact

from wacrm.cli import cli
from wacrm.config import Secret
from wacrm.rules.loader import load_ruleset
from wacrm.rules.runtime import RuleRuntime
from wacrm.sandbox.twilio import TwilioSandbox
from wacrm.server import create_app
from wacrm.store import create_store_engine
from wacrm.workers.inbox import InboxProcessor

ACCOUNT_SID = "AC" + "0" * 30 + "07"
AUTH_TOKEN = "twilio-cli-auth-token-secret"
FROM = "+14155238886"
HELLO_SID = "HX" + "b" * 32
PUBLIC = "https://hooks.example.com"


@pytest.fixture
def twilio_sandbox() -> Iterator[tuple[str, TwilioSandbox]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sandbox = TwilioSandbox(
        ACCOUNT_SID, AUTH_TOKEN, senders=("whatsapp:" + FROM,), content_sids=(HELLO_SID,)
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


def twilio_env(
    tmp_path: Path, base_url: str = "http://127.0.0.1:9", **extra: str
) -> dict[str, str]:
    return {
        "WACRM_CONFIG": str(tmp_path / "none.toml"),
        "WACRM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "WACRM_WHATSAPP_PHONE_NUMBER_ID": "",
        "WACRM_WHATSAPP_ACCESS_TOKEN": "",
        "WACRM_TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "WACRM_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "WACRM_TWILIO_API_BASE_URL": base_url,
        "WACRM_TWILIO_FROM_NUMBER": FROM,
        "WACRM_TWILIO_CONTENT_SIDS": f"hello={HELLO_SID}",
        "WACRM_PUBLIC_URL": PUBLIC,
        **extra,
    }


async def test_given_twilio_configured_when_wacrm_send_then_prints_sid_and_statuses_export(
    twilio_sandbox: tuple[str, TwilioSandbox], tmp_path: Path
) -> None:
    base_url, sandbox = twilio_sandbox
    env = twilio_env(tmp_path, base_url)
    runner = CliRunner()

    template = runner.invoke(
        cli, ["send", "--to", BOB, "--template", "hello", "--param", "Ana"], env=env
    )
    store = create_store_engine(env["WACRM_DATABASE_URL"])
    add_contact(store, 1, ALICE, datetime.now(UTC) - timedelta(minutes=5))  # Alice wrote
    text = runner.invoke(cli, ["send", "--to", ALICE, "--text", "Your order shipped"], env=env)
    media = runner.invoke(
        cli,
        ["send", "--to", ALICE, "--media", "https://cdn.test/i.jpg", "--caption", "Hi"],
        env=env,
    )
    cold = runner.invoke(cli, ["send", "--to", BOB, "--text", "Hi"], env=env)

    assert template.exit_code == 0, template.output
    assert template.output.strip() == sandbox.sent[0].sid
    assert (sandbox.sent[0].form["ContentSid"], sandbox.sent[0].form["ContentVariables"]) == (
        HELLO_SID,
        '{"1":"Ana"}',
    )
    assert text.exit_code == 0, text.output
    assert text.output.strip() == sandbox.sent[1].sid
    assert sandbox.sent[1].form["StatusCallback"] == PUBLIC + "/webhooks/twilio"
    assert media.exit_code == 0, media.output
    assert (sandbox.sent[2].form["MediaUrl"], sandbox.sent[2].form["Body"]) == (
        "https://cdn.test/i.jpg",
        "Hi",
    )
    assert cold.exit_code == 1 and "63016" in cold.output  # refused locally: window closed
    assert len(sandbox.sent) == 3

    # The statuses arrive by signed callback at the real app and show in the export.
    settings = settings_for_tests(twilio_auth_token=Secret(AUTH_TOKEN), public_url=PUBLIC)
    processor = InboxProcessor(store, settings, rules=RuleRuntime(load_ruleset()))
    async with serving(create_app(settings, store)) as app:
        assert await sandbox.deliver(sandbox.sent[1].sid, app) == [200, 200, 200]
        await sandbox.deliver(sandbox.sent[0].sid, app, statuses=("sent", "delivered"))
        processor.process_pending()
    store.dispose()
    export = runner.invoke(cli, ["export", "messages"], env=env)

    exported = {m["provider_message_id"]: m for m in map(json.loads, export.output.splitlines())}
    assert exported[sandbox.sent[1].sid]["status"] == "read"
    assert exported[sandbox.sent[0].sid]["status"] == "delivered"
    assert {exported[m.sid]["provider"] for m in sandbox.sent} == {"twilio"}
    outputs = template.output + text.output + media.output + cold.output + export.output
    assert AUTH_TOKEN not in outputs


def test_given_content_warning_when_wacrm_send_then_warned_on_stderr_and_sent(
    twilio_sandbox: tuple[str, TwilioSandbox], tmp_path: Path
) -> None:
    base_url, sandbox = twilio_sandbox
    env = twilio_env(tmp_path, base_url)

    result = CliRunner().invoke(cli, ["send", "--to", BOB, "--template", "hello"], env=env)
    warned = CliRunner().invoke(
        cli,
        ["send", "--to", BOB, "--template", "hello", "--param", "FREE gift"],
        env=env,
    )

    assert result.exit_code == 0, result.output
    assert warned.exit_code == 0, warned.output
    assert "wacrm: warning:" in warned.stderr and "free" in warned.stderr.lower()
    assert warned.stdout.strip() == sandbox.sent[1].sid


@pytest.mark.parametrize(
    ("args", "extra", "words"),
    [
        (["--text", "x" * 5000], {}, "the limit is 4096"),
        (["--text", "Win FREE stuff"], {"WACRM_CONTENT_POLICY": "block"},
         "refused by the content policy: sensitive-word: 'FREE'"),
        (["--template", "bye"], {}, "WACRM_TWILIO_CONTENT_SIDS"),
        (["--media", "{file}"], {}, "public URL"),
        (["--text", "hi"], {"WACRM_TWILIO_CONTENT_SIDS": "hello=HX1"},
         "WACRM_TWILIO_CONTENT_SIDS"),
        (["--text", "hi"], {"WACRM_TWILIO_FROM_NUMBER": ""}, "WACRM_TWILIO_FROM_NUMBER"),
        (["--text", "hi", "--from", "0123"], {}, "international number"),
        (["--text", "hi"], {"WACRM_TWILIO_AUTH_TOKEN": ""},
         "WACRM_TWILIO_AUTH_TOKEN to send through Twilio"),
        (["--text", "hi", "--provider", "meta"], {},
         "set WACRM_WHATSAPP_PHONE_NUMBER_ID and WACRM_WHATSAPP_ACCESS_TOKEN"),
        (["--text", "hi"], {"WACRM_WHATSAPP_PHONE_NUMBER_ID": "106540352242922",
                            "WACRM_WHATSAPP_ACCESS_TOKEN": "meta-token"},
         "--provider meta|twilio"),
        (["--text", "hi", "--provider", "meta", "--from", FROM],
         {"WACRM_WHATSAPP_PHONE_NUMBER_ID": "106540352242922",
          "WACRM_WHATSAPP_ACCESS_TOKEN": "meta-token"}, "--from is for Twilio"),
    ],
    ids=["too-long", "blocked-word", "no-content-sid", "local-file", "bad-content-sids",
         "no-from", "bad-from", "no-token", "meta-unset", "both-configured", "from-with-meta"],
)  # fmt: skip
def test_given_bad_input_or_config_when_wacrm_send_then_one_line_exit_2_nothing_sent(
    tmp_path: Path, args: list[str], extra: dict[str, str], words: str
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n")
    argv = ["send", "--to", ALICE, *(a.replace("{file}", str(photo)) for a in args)]

    # The API base URL points nowhere: anything that tried to send would fail differently.
    result = CliRunner().invoke(cli, argv, env=twilio_env(tmp_path, **extra))

    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wacrm: error:")
    assert words in lines[0]
    assert AUTH_TOKEN not in result.output and "Traceback" not in result.output


def test_given_nothing_configured_when_wacrm_send_then_names_both_providers_settings(
    tmp_path: Path,
) -> None:
    env = twilio_env(tmp_path, WACRM_TWILIO_ACCOUNT_SID="", WACRM_TWILIO_AUTH_TOKEN="")

    result = CliRunner().invoke(cli, ["send", "--to", ALICE, "--text", "hi"], env=env)

    assert result.exit_code == 2
    assert "WACRM_WHATSAPP_PHONE_NUMBER_ID and WACRM_WHATSAPP_ACCESS_TOKEN" in result.output
    assert "WACRM_TWILIO_ACCOUNT_SID and WACRM_TWILIO_AUTH_TOKEN" in result.output
