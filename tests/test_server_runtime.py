"""``build_workers``, the server's composition point: one rules runtime shared by the inbox
processor and the outbox, the rule timer, the CRM's picklist options; bad rule files stop
``wacrm serve`` with one line."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from conftest import APP_SECRET, VERIFY_TOKEN
from sqlalchemy import Engine, select

from wacrm.cli import cli
from wacrm.config import ConfigError, Secret, Settings
from wacrm.hooks.worker import HookDeliveryWorker
from wacrm.rules.runtime import RuleRuntime
from wacrm.server.runtime import (
    DownstreamOnly,
    build_workers,
    ensure_default_account,
    load_rules,
)
from wacrm.store.schema import local_crm_properties
from wacrm.workers.inbox import InboxProcessor
from wacrm.workers.rule_timer import RuleTimer
from wacrm.workers.whatsapp_outbox import WhatsAppOutboxWorker

BAD_RULE = (
    "version: 1\nrules:\n  - name: greet\n    when: {message_received: {}}\n"
    "    then: [{set_priority: urgent}]\n"
)


def _settings(**values: object) -> Settings:
    return replace(
        Settings(),
        whatsapp_app_secret=Secret(APP_SECRET),
        whatsapp_verify_token=Secret(VERIFY_TOKEN),
        **values,  # type: ignore[arg-type]
    )


def test_given_settings_when_workers_built_then_one_rules_runtime_shared_and_options_installed(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "mine.yaml").write_text(
        "version: 1\nrules:\n  - name: vip\n    when: {message_received: {keywords: [vip]}}\n"
        "    then: [{add_tags: [vip-lead]}]\n",
        encoding="utf-8",
    )
    settings = _settings(rules_dir=str(rules_dir), price_list_text="Starter 9 USD")
    ensure_default_account(sqlite_engine, settings)

    workers = build_workers(settings, sqlite_engine)

    assert [w.name for w in workers] == [
        "inbox",
        "whatsapp-outbox",
        "sync",
        "rule_timer",
        "media",
        "hooks",
    ]
    inbox, *fed = workers
    # Only the processor is woken by webhooks; it wakes the outboxes itself.
    assert all(isinstance(w, DownstreamOnly) for w in fed)
    whatsapp, _sync, timer, _media, hooks = (w.worker for w in fed if isinstance(w, DownstreamOnly))
    assert isinstance(inbox, InboxProcessor)
    assert isinstance(whatsapp, WhatsAppOutboxWorker)
    assert isinstance(timer, RuleTimer)
    runtime = inbox.rules
    assert isinstance(runtime, RuleRuntime)
    assert whatsapp.rules is runtime and timer._runtime is runtime
    assert runtime.ruleset.rules[-1].name == "vip"  # the admin's rules run after the defaults
    assert runtime.detector is not None and runtime.detector.loaded  # warmed up at start
    with sqlite_engine.connect() as conn:
        options = {
            row.name: orjson.loads(row.options)
            for row in conn.execute(select(local_crm_properties))
        }
    assert {"handover", "price-enquiry", "delivery-failed", "vip-lead"} <= set(
        options["whatsapp_tags"]
    )
    assert options["priority"] == ["high", "medium", "low"]
    # The processor wakes the hook worker after a pass that ran rules.
    assert hooks.wake in [d.wake for d in inbox._downstream]
    whatsapp.close()
    assert isinstance(hooks, HookDeliveryWorker)
    hooks.close()


class _Counting:
    name = "counting"

    def __init__(self) -> None:
        self.wakes = 0
        self.ran = False

    async def run(self, stop: asyncio.Event) -> None:
        self.ran = True
        await stop.wait()

    def wake(self) -> None:
        self.wakes += 1


async def test_given_downstream_only_worker_when_webhook_wakes_it_then_ignored_but_it_runs() -> (
    None
):
    inner = _Counting()
    worker = DownstreamOnly(inner)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(0)

    worker.wake()  # what the app does for every stored webhook

    assert (inner.wakes, inner.ran, worker.name) == (0, True, "counting")
    stop.set()
    await asyncio.wait_for(task, timeout=5)


def test_given_bad_rule_file_when_rules_loaded_then_config_error_names_file_rule_problem(
    tmp_path: Path,
) -> None:
    (tmp_path / "mine.yaml").write_text(BAD_RULE, encoding="utf-8")

    with pytest.raises(ConfigError) as excinfo:
        load_rules(_settings(rules_dir=str(tmp_path)))

    assert str(excinfo.value) == (
        f"rules: {tmp_path / 'mine.yaml'}: rule 'greet': "
        "set_priority must be one of high, medium, low"
    )


def test_given_bad_rule_file_when_serve_started_then_exit_2_one_line_and_nothing_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "mine.yaml").write_text(BAD_RULE, encoding="utf-8")
    database = tmp_path / "wacrm.db"
    monkeypatch.delenv("WACRM_CONFIG", raising=False)
    monkeypatch.setenv("WACRM_RULES_DIR", str(rules_dir))
    monkeypatch.setenv("WACRM_DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setenv("WACRM_WHATSAPP_APP_SECRET", APP_SECRET)
    monkeypatch.setenv("WACRM_WHATSAPP_VERIFY_TOKEN", VERIFY_TOKEN)

    result = CliRunner().invoke(cli, ["serve", "--port", "0"])

    assert result.exit_code == 2
    assert result.output == (
        f"wacrm: error: rules: {rules_dir / 'mine.yaml'}: rule 'greet': "
        "set_priority must be one of high, medium, low\n"
    )
    assert not database.exists()
