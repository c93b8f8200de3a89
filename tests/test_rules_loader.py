"""Rule files: the shipped set loads; a bad file is refused with file, rule and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from wacrm.model import Priority
from wacrm.rules.loader import DEFAULTS_DIR, load_rules, load_ruleset
from wacrm.rules.schema import (
    AddTags,
    BusinessHours,
    CreateTask,
    HandOver,
    MessageReceived,
    NoReply,
    Reply,
    RuleFileError,
)

GOOD_RULE = """\
  - name: {name}
    when: {{message_received: {{keywords: [hi]}}}}
    then: [{{add_tags: [greeted]}}]
"""


def _write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("version: 1\nrules:\n" + body, encoding="utf-8")
    return path


def test_given_shipped_defaults_when_loaded_then_every_required_rule_is_there() -> None:
    ruleset = load_ruleset()

    by_name = {r.name: r for r in ruleset.rules}
    assert {
        "price-list",
        "human-handover",
        "ticket-ack",
        "no-reply-reminder",
        "unread-priority",
        "order-status-update",
        "delivery-failed",
    } <= set(by_name)
    reminder = by_name["no-reply-reminder"]
    assert reminder.trigger == NoReply(48.0)
    assert any(isinstance(a, CreateTask) for a in reminder.actions)
    assert any(isinstance(a, AddTags) for a in reminder.actions)
    price = by_name["price-list"]
    assert isinstance(price.trigger, MessageReceived)
    assert {"price", "السعر"} <= {k.raw for k in price.trigger.matcher.keywords}
    assert isinstance(price.actions[0], Reply)
    assert isinstance(by_name["human-handover"].actions[0], HandOver)
    # One format, one engine: every shipped file is a rule file of this engine.
    assert {f.name for f in ruleset.files} == {p.name for p in DEFAULTS_DIR.glob("*.yaml")}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            "  - name: a\n    when: {message_received: {keywords: [x]}}\n"
            "    then: [{reply: {text: 'Hi {secret}'}}]\n",
            "rule 'a': reply.text: unknown placeholder {secret}",
        ),
        (
            "  - name: a\n    when: {message_received: {keywords: [x]}}\n"
            "    then: [{reply: {text: 'Hi {name.__class__}'}}]\n",
            "rule 'a': reply.text: placeholder {name.__class__} is not a plain {name}",
        ),
        (
            "  - name: a\n    when: {message_received: {keywords: [x]}}\n"
            "    then: [{reply: {text: '{name!r:>10}'}}]\n",
            "is not a plain {name}",
        ),
        (
            "  - name: a\n    when: {message_received: {patterns: ['(']}}\n"
            "    then: [{add_tags: [x]}]\n",
            "rule 'a': pattern '(':",
        ),
        (
            "  - name: a\n    when: {message_recieved: {}}\n    then: [{add_tags: [x]}]\n",
            "rule 'a': when: unknown 'message_recieved'",
        ),
        (
            "  - name: a\n    when: {no_reply: {hours: 48}}\n    then: [{add_tag: [x]}]\n",
            "rule 'a': then[0]: unknown 'add_tag'",
        ),
        (
            "  - name: a\n    when: {no_reply: {hours: 48}}\n    then: []\n",
            "rule 'a': 'then' must be a non-empty list of actions",
        ),
        (
            "  - name: a\n    when: {no_reply: {hours: -1}}\n    then: [{add_tags: [x]}]\n",
            "rule 'a': no_reply.hours must be at least 0.01",
        ),
        (
            "  - name: a\n    when: {no_reply: {}}\n    then: [{set_priority: urgent}]\n",
            "rule 'a': set_priority must be one of high, medium, low",
        ),
        (
            "  - name: a\n    when: {no_reply: {}}\n    then: [{add_tags: ['a;b']}]\n",
            "rule 'a': add_tags: tag 'a;b' must be 1-64 characters without , or ;",
        ),
        (
            "  - name: a\n    when: {no_reply: {}}\n"
            "    if: [{business_hours: {timezone: Mars/Olympus}}]\n    then: [{add_tags: [x]}]\n",
            "rule 'a': business_hours.timezone 'Mars/Olympus' is not a known time zone",
        ),
        (
            "  - name: a\n    when: {no_reply: {}}\n"
            "    if: [{contact: {field: language, contains: ar}}]\n    then: [{add_tags: [x]}]\n",
            "rule 'a': contains applies to tags only",
        ),
        (
            "  - name: a\n    when: {no_reply: {}}\n    then: [{reply: {text: '{keyword}'}}]\n",
            "rule 'a': reply.text: unknown placeholder {keyword}",  # message rules only
        ),
        (
            "  - name: a\n    when: {no_reply: {}}\n    then: [{add_tags: [x]}]\n    stopp: true\n",
            "rule 'a': rule: unknown key 'stopp'",
        ),
        (
            "  - name: Bad Name\n    when: {no_reply: {}}\n    then: [{add_tags: [x]}]\n",
            "rule #1: name 'Bad Name' must be lower-case",
        ),
        (
            GOOD_RULE.format(name="a") + GOOD_RULE.format(name="a"),
            "rule 'a': the name is used twice",
        ),
    ],
)
def test_given_bad_rule_when_loaded_then_error_names_file_rule_and_problem(
    tmp_path: Path, body: str, problem: str
) -> None:
    path = _write(tmp_path, "mine.yaml", body)

    with pytest.raises(RuleFileError) as caught:
        load_rules([tmp_path])

    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert problem in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("rules: [\n", "not valid YAML at line"),
        ("version: 2\nrules: []\n", "'version' must be 1"),
        ("- a\n- b\n", "expected a mapping with 'version: 1'"),
    ],
)
def test_given_bad_file_when_loaded_then_error_names_file(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(RuleFileError, match=problem) as caught:
        load_rules([path])
    assert str(caught.value).startswith(f"{path}: ")


def test_given_same_name_in_two_files_when_loaded_then_error_names_both(tmp_path: Path) -> None:
    first = _write(tmp_path, "a.yaml", GOOD_RULE.format(name="hello"))
    second = _write(tmp_path, "b.yaml", GOOD_RULE.format(name="hello"))

    with pytest.raises(RuleFileError) as caught:
        load_rules([tmp_path])
    assert str(caught.value) == f"{second}: rule 'hello': the name is already used in {first}"


def test_given_directory_when_loaded_then_files_run_in_name_order(tmp_path: Path) -> None:
    _write(tmp_path, "20_b.yaml", GOOD_RULE.format(name="second"))
    _write(tmp_path, "10_a.yml", GOOD_RULE.format(name="first"))
    (tmp_path / "notes.txt").write_text("not a rule file")

    ruleset = load_rules([tmp_path])

    assert [r.name for r in ruleset.rules] == ["first", "second"]


def test_given_admin_dir_when_ruleset_loaded_then_same_name_replaces_default_in_place(
    tmp_path: Path,
) -> None:
    _write(
        tmp_path,
        "mine.yaml",
        "  - name: price-list\n    enabled: false\n"
        "    when: {message_received: {keywords: [price]}}\n    then: [{add_tags: [x]}]\n"
        + GOOD_RULE.format(name="my-greeting"),
    )
    defaults = [r.name for r in load_ruleset().rules]

    ruleset = load_ruleset(tmp_path)

    names = [r.name for r in ruleset.rules]
    assert names == [*defaults, "my-greeting"]
    price = ruleset.rules[names.index("price-list")]
    assert price.enabled is False
    assert "price-list" not in [r.name for r in ruleset.enabled()]


def test_given_full_rule_when_loaded_then_typed_values() -> None:
    path = DEFAULTS_DIR / "keywords.yaml"
    handover = next(r for r in load_rules([path]).rules if r.name == "human-handover")

    action = handover.actions[0]
    assert action == HandOver("handover", Priority.HIGH, "asked for a person ({keyword})")
    assert handover.stop is True


def test_given_business_hours_spec_when_loaded_then_day_range_wraps_week(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "h.yaml",
        "  - name: a\n    when: {no_reply: {}}\n"
        "    if: [{business_hours: {timezone: Asia/Riyadh, days: sun-thu, from: '08:00',"
        " to: '16:30'}}]\n    then: [{add_tags: [x]}]\n",
    )

    (cond,) = load_rules([tmp_path]).rules[0].conditions

    assert isinstance(cond, BusinessHours)
    assert cond.days == frozenset({6, 0, 1, 2, 3})
    assert str(cond.timezone) == "Asia/Riyadh"


def test_given_admin_dir_with_old_minimal_auto_reply_file_when_loaded_then_error_names_it(
    tmp_path: Path,
) -> None:
    # The minimal auto-reply format is gone (one rules engine); a leftover file of it is an
    # error naming the file and rule, not a file silently skipped.
    old = tmp_path / "auto_replies.yaml"
    old.write_text(
        "version: 1\nrules:\n  - name: price\n    when: keyword\n    keywords: [price]\n"
        "    reply: hi\n",
        encoding="utf-8",
    )
    _write(tmp_path, "mine.yaml", GOOD_RULE.format(name="mine"))

    with pytest.raises(RuleFileError) as excinfo:
        load_ruleset(tmp_path)

    assert str(excinfo.value).startswith(f"{old}: rule 'price': ")
    assert "when" in str(excinfo.value)
