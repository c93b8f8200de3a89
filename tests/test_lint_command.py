"""`wacrm lint MESSAGE_FILE` and the content lint of `wacrm rules check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from wacrm.cli import cli


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # No wacrm.toml or WACRM_* from the machine running the tests.
    monkeypatch.chdir(tmp_path)
    for name in (
        "WACRM_CONFIG",
        "WACRM_RULES_DIR",
        "WACRM_CONTENT_POLICY",
        "WACRM_CONTENT_SENSITIVE_WORDS",
        "WACRM_CONTENT_SHORTENERS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WACRM_PRICE_LIST_TEXT", "Starter 9.99 USD/month")
    return CliRunner()


def write(path: Path, content: str) -> str:
    path.write_text(content, encoding="utf-8")
    return path.name


def test_given_clean_text_when_linted_then_exit_0_and_clean_summary(
    run: CliRunner, tmp_path: Path
) -> None:
    name = write(tmp_path / "hello.txt", "Your order 1042 has shipped.\n")

    result = run.invoke(cli, ["lint", name])

    assert result.exit_code == 0, result.output
    assert result.output == "hello.txt: clean: no findings\n"


def test_given_warnings_when_linted_then_line_col_code_and_advice_once_exit_0(
    run: CliRunner, tmp_path: Path
) -> None:
    name = write(
        tmp_path / "promo.txt", "Hello!\nGet it free, FREE for a limited time: bit.ly/x1\n"
    )

    result = run.invoke(cli, ["lint", name])

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    finding_lines = [line for line in lines if not line.startswith("    ")]
    word = "is a sensitive word: typical of bulk promotion"
    assert finding_lines == [
        f"promo.txt:2:8: warning sensitive-word: 'free' {word}",
        f"promo.txt:2:14: warning sensitive-word: 'FREE' {word}",
        f"promo.txt:2:25: warning sensitive-word: 'limited time' {word}",
        "promo.txt:2:39: warning link-shortener: bit.ly/x1 goes through the link shortener bit.ly",
        "promo.txt: 0 errors, 4 warnings",
    ]
    advice = [line for line in lines if line.startswith("    ")]
    assert len(advice) == 2  # once per code
    assert "spam flags" in advice[1] and "your own domain" in advice[1]


def test_given_warnings_and_strict_when_linted_then_exit_1(run: CliRunner, tmp_path: Path) -> None:
    name = write(tmp_path / "promo.txt", "free")

    result = run.invoke(cli, ["lint", "--strict", name])

    assert result.exit_code == 1
    assert (
        result.output.splitlines()[-1] == "promo.txt: 0 errors, 1 warning (warnings fail: --strict)"
    )


def test_given_block_policy_when_warnings_then_exit_1(
    run: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WACRM_CONTENT_POLICY", "block")
    name = write(tmp_path / "promo.txt", "free")

    result = run.invoke(cli, ["lint", name])

    assert result.exit_code == 1
    assert "(warnings fail: WACRM_CONTENT_POLICY=block)" in result.output


def test_given_configured_words_when_linted_then_they_replace_the_seed_words(
    run: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WACRM_CONTENT_SENSITIVE_WORDS", "عرض خاص,مجاني")
    name = write(tmp_path / "ar.txt", "free\nتوصيل مجاني")

    result = run.invoke(cli, ["lint", name])

    assert result.exit_code == 0
    assert result.output.startswith("ar.txt:2:7: warning sensitive-word: 'مجاني'")
    assert "0 errors, 1 warning" in result.output


@pytest.mark.parametrize(("length", "code"), [(4096, 0), (4097, 1)])
def test_given_text_at_and_over_4096_when_linted_then_exit_code(
    run: CliRunner, tmp_path: Path, length: int, code: int
) -> None:
    name = write(tmp_path / "long.txt", "a" * length + "\n")  # the final newline is not sent

    result = run.invoke(cli, ["lint", name])

    assert result.exit_code == code, result.output
    if code:
        assert result.output.startswith(
            "long.txt:1:4097: error text-too-long: text.body is 4097 characters; the limit is 4096"
        )


def test_given_json_list_when_linted_then_findings_point_at_the_field_in_the_file(
    run: CliRunner, tmp_path: Path
) -> None:
    bodies = [
        {"type": "text", "text": {"body": "fine"}},
        {"type": "image", "image": {"id": "1", "caption": "Menu: https://tinyurl.com/menu"}},
    ]
    name = write(tmp_path / "batch.json", json.dumps(bodies, indent=2))

    result = run.invoke(cli, ["lint", name])

    assert result.exit_code == 0, result.output
    caption_line = (
        json.dumps(bodies, indent=2)
        .splitlines()
        .index('      "caption": "Menu: https://tinyurl.com/menu"')
    )
    assert result.output.startswith(
        f"batch.json:{caption_line + 1}:18: warning link-shortener: message [1]: image.caption: "
        "https://tinyurl.com/menu goes through the link shortener tinyurl.com "
        "(at line 1, column 7 of the text)"
    )


def test_given_json_body_with_errors_when_linted_then_exit_1(
    run: CliRunner, tmp_path: Path
) -> None:
    body = {
        "type": "interactive",
        "interactive": {
            "type": "button",
            "body": {"text": "Pick"},
            "action": {
                "buttons": [
                    {"type": "reply", "reply": {"id": str(i), "title": f"Choice {i}"}}
                    for i in range(4)
                ]
            },
        },
    }
    name = write(tmp_path / "buttons.json", json.dumps(body))

    result = run.invoke(cli, ["lint", name])

    assert result.exit_code == 1
    assert (
        "error button-count: interactive.action.buttons: 4 reply buttons; give 1 to 3"
        in result.output
    )
    assert "list message" in result.output  # what to do instead
    assert result.output.splitlines()[-1] == "buttons.json: 1 error, 0 warnings"


def test_given_bad_json_when_linted_then_exit_2_naming_the_position(
    run: CliRunner, tmp_path: Path
) -> None:
    name = write(tmp_path / "bad.json", '{"type": "text",\n "text": {"body": "hi",}}')

    result = run.invoke(cli, ["lint", name])

    assert result.exit_code == 2
    assert result.output == (
        "wacrm: error: bad.json: not valid JSON at line 2, column 24: "
        "Expecting property name enclosed in double quotes\n"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('["hi"]', "bad.json: item 0 is a string, not a send body (a JSON object)"),
        ("42", "bad.json: the file is a number, not a send body (a JSON object)"),
        ("[]", "bad.json: an empty list; there is no message to check"),
    ],
)
def test_given_json_that_is_not_a_send_body_when_linted_then_exit_2(
    run: CliRunner, tmp_path: Path, content: str, message: str
) -> None:
    write(tmp_path / "bad.json", content)

    result = run.invoke(cli, ["lint", "bad.json"])

    assert result.exit_code == 2
    assert result.output == f"wacrm: error: {message}\n"


def test_given_missing_file_when_linted_then_exit_2_one_line(run: CliRunner) -> None:
    result = run.invoke(cli, ["lint", "nowhere.txt"])

    assert result.exit_code == 2
    assert result.output == "wacrm: error: nowhere.txt: no such file\n"


def test_given_file_not_utf8_when_linted_then_exit_2(run: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))

    result = run.invoke(cli, ["lint", "latin1.txt"])

    assert result.exit_code == 2
    assert result.output == "wacrm: error: latin1.txt: not UTF-8 text (byte 3 is invalid)\n"


def test_given_stdin_when_linted_then_read_as_text(run: CliRunner) -> None:
    result = run.invoke(cli, ["lint", "-"], input="Limited time only\n")

    assert result.exit_code == 0
    assert result.output.startswith("<stdin>:1:1: warning sensitive-word: 'Limited time'")


def test_given_type_json_when_file_has_other_extension_then_read_as_json(
    run: CliRunner, tmp_path: Path
) -> None:
    name = write(tmp_path / "body.txt", json.dumps({"type": "text", "text": {"body": ""}}))

    as_json = run.invoke(cli, ["lint", "--type", "json", name])
    as_text = run.invoke(cli, ["lint", name])

    assert as_json.exit_code == 1
    assert "error text-empty" in as_json.output
    assert as_text.exit_code == 0  # as text, the JSON is just a (clean) message


def test_given_invalid_policy_setting_when_linted_then_exit_2_naming_value(
    run: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WACRM_CONTENT_POLICY", "sometimes")
    name = write(tmp_path / "m.txt", "hi")

    result = run.invoke(cli, ["lint", name])

    assert result.exit_code == 2
    assert result.output == (
        "wacrm: error: WACRM_CONTENT_POLICY must be 'warn' or 'block', got 'sometimes'\n"
    )


# --- rules check -------------------------------------------------------------------------------


def rule_dir(tmp_path: Path, reply: str) -> str:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "mine.yaml").write_text(
        "version: 1\nrules:\n  - name: greet\n    when: {message_received: {}}\n"
        f"    then: [{{reply: {{text: {reply}}}}}]\n",
        encoding="utf-8",
    )
    return str(rules)


def test_given_shipped_rules_when_checked_then_no_content_findings(run: CliRunner) -> None:
    result = run.invoke(cli, ["rules", "check"])

    assert result.exit_code == 0, result.output
    assert "auto-reply texts" not in result.output
    assert result.output.rstrip().endswith("ok: 7 rules in 4 files")


def test_given_shipped_rules_and_block_policy_when_checked_then_still_clean(
    run: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WACRM_CONTENT_POLICY", "block")
    monkeypatch.setenv(
        "WACRM_CONTENT_SENSITIVE_WORDS", "free,limited time,gratis,grátis,مجاني,免费"
    )

    result = run.invoke(cli, ["rules", "check"])

    assert result.exit_code == 0, result.output


def test_given_rule_reply_with_sensitive_word_when_checked_then_warning_listed(
    run: CliRunner, tmp_path: Path
) -> None:
    directory = rule_dir(tmp_path, '{default: "Hi!", ar: "شحن مجاني", es: "Envío free hoy"}')

    result = run.invoke(cli, ["rules", "check", directory])

    assert result.exit_code == 0, result.output
    assert (
        f"{directory}/mine.yaml: rule 'greet': reply.text.es (line 1, column 7): "
        "warning sensitive-word: 'free' is a sensitive word: typical of bulk promotion"
    ) in result.output
    assert result.output.splitlines()[-1] == "auto-reply texts: 0 errors, 1 warning"


def test_given_price_list_with_shortener_when_checked_then_the_filled_text_is_linted(
    run: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WACRM_PRICE_LIST_TEXT", "Prices: https://bit.ly/p")
    directory = rule_dir(tmp_path, '"{price_list}"')

    result = run.invoke(cli, ["rules", "check", directory])

    assert "warning link-shortener: https://bit.ly/p goes through" in result.output


def test_given_rule_reply_over_4096_when_checked_then_exit_1(
    run: CliRunner, tmp_path: Path
) -> None:
    directory = rule_dir(tmp_path, '"' + "a" * 4097 + '"')

    result = run.invoke(cli, ["rules", "check", directory])

    assert result.exit_code == 1
    assert "reply.text.default (line 1, column 4097): error text-too-long" in result.output


def test_given_rule_warning_and_block_policy_when_checked_then_exit_1(
    run: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WACRM_CONTENT_POLICY", "block")
    directory = rule_dir(tmp_path, '"Free coffee"')

    result = run.invoke(cli, ["rules", "check", directory])

    assert result.exit_code == 1
    assert "(warnings fail: WACRM_CONTENT_POLICY=block)" in result.output
