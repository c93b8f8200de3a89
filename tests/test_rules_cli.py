"""`wacrm rules check` and `wacrm rules test`."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from wacrm.cli import cli


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # No wacrm.toml or WACRM_* from the machine running the tests.
    monkeypatch.chdir(tmp_path)
    for name in ("WACRM_RULES_DIR", "WACRM_CONFIG", "WACRM_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WACRM_PRICE_LIST_TEXT", "Starter 9.99 USD/month")
    return CliRunner()


def test_given_shipped_rules_when_checked_then_rules_listed_per_file(run: CliRunner) -> None:
    result = run.invoke(cli, ["rules", "check"])

    assert result.exit_code == 0, result.output
    assert "keywords.yaml:\n  - human-handover [message_received]" in result.output
    assert "  - price-list [message_received] → reply, add_tags" in result.output
    assert result.output.rstrip().endswith("ok: 7 rules in 4 files")


def test_given_bad_rule_dir_when_checked_then_exit_2_with_named_error(
    run: CliRunner, tmp_path: Path
) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "mine.yaml").write_text(
        "version: 1\nrules:\n  - name: greet\n    when: {message_received: {}}\n"
        "    then: [{set_priority: urgent}]\n",
        encoding="utf-8",
    )

    result = run.invoke(cli, ["rules", "check", str(rules_dir)])

    assert result.exit_code == 2
    assert result.output == (
        f"wacrm: error: {rules_dir / 'mine.yaml'}: rule 'greet': "
        "set_priority must be one of high, medium, low\n"
    )


def test_given_arabic_price_question_when_tested_then_price_rule_shown_and_nothing_stored(
    run: CliRunner, tmp_path: Path
) -> None:
    result = run.invoke(
        cli, ["rules", "test", "--phone", "+966 50 123 4567", "--message", "السعر؟"]
    )

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("language: ar (detected")
    assert lines[1] == "1. price-list: message contains 'سعر'"
    assert lines[2] == "   reply text: 'Starter 9.99 USD/month'"
    assert lines[3] == "   tags +price-enquiry"
    assert lines[-1] == "(nothing was changed)"
    assert list(tmp_path.iterdir()) == []  # no store was created


def test_given_two_rules_fire_when_tested_then_shown_in_order(run: CliRunner) -> None:
    result = run.invoke(
        cli,
        [
            "rules",
            "test",
            "--phone",
            "+14155550100",
            "--message",
            "price",
            "--unread",
            "5",
            "--language",
            "en",
        ],
    )

    assert result.exit_code == 0, result.output
    numbered = [line for line in result.output.splitlines() if line[:1].isdigit()]
    assert numbered == [
        "1. unread-priority: 5 unread (≥ 5)",
        "2. price-list: message contains 'price'",
    ]


def test_given_bad_phone_when_tested_then_exit_2_with_reason(run: CliRunner) -> None:
    result = run.invoke(cli, ["rules", "test", "--phone", "0501234567", "--message", "hi"])

    assert result.exit_code == 2
    assert result.output.startswith("wacrm: error: --phone 0501234567: national number")


def test_given_unknown_type_when_tested_then_exit_2(run: CliRunner) -> None:
    result = run.invoke(
        cli, ["rules", "test", "--phone", "+14155550100", "--message", "hi", "--type", "fax"]
    )

    assert result.exit_code == 2
    assert "--type 'fax' is not a WhatsApp message type" in result.output
