"""Reading rule files: YAML in, a checked :class:`RuleSet` out, or an error that names the
file, the rule and the problem.

A file looks like this (every key is checked; an unknown key is an error, so a typo never
silently turns a rule off)::

    version: 1
    rules:
      - name: price-list
        when: {message_received: {keywords: [price, السعر], types: [text]}}
        if: [{contact: {field: tags, not_contains: handover}}]
        then: [{reply: {text: "{price_list}"}}, {add_tags: [price-enquiry]}]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from datetime import time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from wacrm.model import MessageType
from wacrm.rules import checks as chk
from wacrm.rules.matching import TextMatcher
from wacrm.rules.schema import (
    CHANGE_FIELDS,
    COMMON_PLACEHOLDERS,
    CONDITION_FIELDS,
    TRIGGER_PLACEHOLDERS,
    Action,
    AddTags,
    BusinessHours,
    Condition,
    ContactField,
    CreateTask,
    EmitEvent,
    FieldChanged,
    FieldOp,
    HandOver,
    LocalizedText,
    MessageFailed,
    MessageReceived,
    NoReply,
    OpenTicket,
    RemoveTags,
    Reply,
    Rule,
    RuleFileError,
    RuleSet,
    SetPriority,
    TemplateSpec,
    Trigger,
    UnreadAtLeast,
)

DEFAULTS_DIR = Path(__file__).parent / "defaults"

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,119}$")
_EVENT = re.compile(r"^[a-z][a-z0-9_.-]{0,79}$")
_LANG = re.compile(r"^[a-z]{2,3}$")
_TEMPLATE_LANG = re.compile(r"^[a-z]{2,3}(_[A-Z]{2})?$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MAX_PATTERN = 500


# --- triggers ------------------------------------------------------------------------


def _message_received(body: Any) -> MessageReceived:
    known = ("keywords", "patterns", "types", "opened_ticket")
    spec = chk.mapping(body, "message_received", known)
    keywords = chk.strings(spec["keywords"], "keywords") if "keywords" in spec else ()
    patterns = chk.strings(spec["patterns"], "patterns") if "patterns" in spec else ()
    for pattern in patterns:
        if len(pattern) > _MAX_PATTERN:
            raise chk.Problem(f"pattern longer than {_MAX_PATTERN} characters")
    try:
        matcher = TextMatcher.build(keywords, patterns)
    except re.error as exc:
        raise chk.Problem(f"pattern {exc.pattern!r}: {exc}") from None
    types: set[MessageType] = set()
    for raw in chk.strings(spec["types"], "types") if "types" in spec else ():
        mtype = MessageType.parse(raw.lower())
        if mtype is MessageType.UNKNOWN and raw.lower() != "unknown":
            raise chk.Problem(f"types: unknown message type {raw!r}")
        types.add(mtype)
    opened = spec.get("opened_ticket")
    opened_ticket = None if opened is None else chk.flag(opened, "opened_ticket")
    return MessageReceived(matcher, frozenset(types), opened_ticket)


def _no_reply(body: Any) -> NoReply:
    spec = chk.mapping(body, "no_reply", ("hours",))
    hours = chk.number(spec.get("hours", 48), "no_reply.hours", minimum=0.01)
    return NoReply(hours)


def _field_changed(body: Any) -> FieldChanged:
    spec = chk.mapping(body, "field_changed", ("field", "to", "from"))
    name = chk.string(spec.get("field"), "field_changed.field")
    if name not in CHANGE_FIELDS:
        known = ", ".join(sorted(CHANGE_FIELDS))
        raise chk.Problem(f"field_changed.field {name!r} is not one of {known}")
    to = frozenset(chk.strings(spec["to"], "field_changed.to")) if "to" in spec else frozenset()
    old = (
        frozenset(chk.strings(spec["from"], "field_changed.from"))
        if "from" in spec
        else frozenset()
    )
    return FieldChanged(name, to, old)


def _unread(body: Any) -> UnreadAtLeast:
    if isinstance(body, dict):
        body = chk.mapping(body, "unread_at_least", ("count",)).get("count")
    return UnreadAtLeast(int(chk.number(body, "unread_at_least", minimum=1, integer=True)))


def _failed(body: Any) -> MessageFailed:
    spec = chk.mapping(body, "message_failed", ("error_codes",))
    codes = chk.strings(spec["error_codes"], "error_codes") if "error_codes" in spec else ()
    return MessageFailed(frozenset(codes))


_TRIGGERS: Mapping[str, Callable[[Any], Trigger]] = {
    "message_received": _message_received,
    "no_reply": _no_reply,
    "field_changed": _field_changed,
    "unread_at_least": _unread,
    "message_failed": _failed,
}


# --- conditions ----------------------------------------------------------------------


def _contact_condition(body: Any) -> ContactField:
    ops = [op.value for op in FieldOp]
    spec = chk.mapping(body, "contact", ("field", *ops))
    name = chk.string(spec.get("field"), "contact.field")
    if name not in CONDITION_FIELDS:
        known = ", ".join(sorted(CONDITION_FIELDS))
        raise chk.Problem(f"contact.field {name!r} is not one of {known}")
    given = [op for op in ops if op in spec]
    if len(given) != 1:
        raise chk.Problem(f"contact condition on {name!r} needs exactly one of {', '.join(ops)}")
    op = FieldOp(given[0])
    raw = spec[op.value]
    where = f"contact.{op.value}"
    operand: str | frozenset[str] | int | bool
    if op is FieldOp.EMPTY:
        operand = chk.flag(raw, where)
    elif op in (FieldOp.AT_LEAST, FieldOp.AT_MOST):
        if name != "unread_count":
            raise chk.Problem(f"{op.value} applies to unread_count only")
        operand = int(chk.number(raw, where, integer=True))
    elif op in (FieldOp.IN, FieldOp.NOT_IN):
        operand = frozenset(chk.strings(raw, where))
    elif op in (FieldOp.CONTAINS, FieldOp.NOT_CONTAINS):
        if name != "tags":
            raise chk.Problem(f"{op.value} applies to tags only")
        operand = chk.string(raw, where)
    else:
        operand = chk.string(raw, where)
    return ContactField(name, op, operand)


def _clock(value: Any, where: str) -> time:
    try:
        return time.fromisoformat(chk.string(value, where))
    except ValueError:
        raise chk.Problem(f"{where} must be a time like 09:00") from None


def _days(value: Any) -> frozenset[int]:
    days: set[int] = set()
    for item in chk.strings(value, "business_hours.days"):
        low = item.lower()[:3]
        first, _, last = item.lower().partition("-")
        if last:  # a range such as sun-thu, wrapping over the week end
            a, b = first[:3], last[:3]
            if a not in _DAYS or b not in _DAYS:
                raise chk.Problem(f"business_hours.days: {item!r} is not a day range like mon-fri")
            i = _DAYS.index(a)
            while True:
                days.add(i)
                if i == _DAYS.index(b):
                    break
                i = (i + 1) % 7
        elif low in _DAYS:
            days.add(_DAYS.index(low))
        else:
            raise chk.Problem(f"business_hours.days: {item!r} is not a day (mon … sun)")
    return frozenset(days)


def _business_hours(body: Any) -> BusinessHours:
    spec = chk.mapping(body, "business_hours", ("timezone", "days", "from", "to", "inside"))
    zone = chk.string(spec.get("timezone", "UTC"), "business_hours.timezone")
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise chk.Problem(f"business_hours.timezone {zone!r} is not a known time zone") from None
    return BusinessHours(
        timezone=tz,
        days=_days(spec.get("days", "mon-fri")),
        start=_clock(spec.get("from", "09:00"), "business_hours.from"),
        end=_clock(spec.get("to", "17:00"), "business_hours.to"),
        inside=chk.flag(spec.get("inside", True), "business_hours.inside"),
    )


def _condition(value: Any, where: str) -> Condition:
    key, body = chk.single(value, where, ("contact", "business_hours"))
    return _contact_condition(body) if key == "contact" else _business_hours(body)


# --- actions -------------------------------------------------------------------------


def _localized(value: Any, where: str, allowed: frozenset[str]) -> LocalizedText:
    if not isinstance(value, dict):
        return LocalizedText(chk.text(value, where, allowed))
    if "default" not in value:
        raise chk.Problem(f"{where} needs a 'default' text for other languages")
    by_language = {}
    for lang, text in value.items():
        if lang != "default" and not _LANG.match(str(lang)):
            raise chk.Problem(f"{where}: {lang!r} is not a language code like ar or en")
        by_language[str(lang)] = chk.text(text, f"{where}.{lang}", allowed)
    default = by_language.pop("default")
    return LocalizedText(default, by_language)


def _template(value: Any, allowed: frozenset[str]) -> TemplateSpec:
    spec = chk.mapping(value, "reply.template", ("name", "languages", "fallback", "params"))
    name = chk.string(spec.get("name"), "reply.template.name")
    raw_languages = spec.get("languages") or {}
    if not isinstance(raw_languages, dict):
        raise chk.Problem("reply.template.languages must map a language to a code, like pt: pt_BR")
    languages = {}
    for lang, raw_code in raw_languages.items():
        code = chk.string(raw_code, f"reply.template.languages.{lang}")
        if not _LANG.match(str(lang)) or not _TEMPLATE_LANG.match(code):
            raise chk.Problem(f"reply.template.languages: {lang!r}: {code!r} is not like pt: pt_BR")
        languages[str(lang)] = code
    fallback = chk.string(spec.get("fallback", "en"), "reply.template.fallback")
    if not _TEMPLATE_LANG.match(fallback):
        raise chk.Problem(f"reply.template.fallback {fallback!r} is not a language code like en_US")
    params = spec.get("params", [])
    if not isinstance(params, list):
        raise chk.Problem("reply.template.params must be a list")
    checked = tuple(
        chk.text(p, f"reply.template.params[{i}]", allowed) for i, p in enumerate(params)
    )
    return TemplateSpec(name, fallback, languages, checked)


def _action(value: Any, where: str, allowed: frozenset[str]) -> Action:
    key, body = chk.single(value, where, _ACTIONS)
    if key == "add_tags":
        return AddTags(chk.tags(body, "add_tags"))
    if key == "remove_tags":
        return RemoveTags(chk.tags(body, "remove_tags"))
    if key == "set_priority":
        return SetPriority(chk.priority(body, "set_priority"))
    if key == "open_ticket":
        spec = body if isinstance(body, dict) else {"subject": body}
        spec = chk.mapping(spec, "open_ticket", ("subject",))
        return OpenTicket(chk.text(spec.get("subject"), "open_ticket.subject", allowed))
    if key == "create_task":
        spec = chk.mapping(body, "create_task", ("subject", "owner", "due_in_hours"))
        hours = chk.number(spec.get("due_in_hours", 0), "create_task.due_in_hours")
        owner = chk.string(spec["owner"], "create_task.owner") if spec.get("owner") else None
        subject = chk.text(spec.get("subject"), "create_task.subject", allowed)
        return CreateTask(subject, timedelta(hours=hours), owner)
    if key == "reply":
        spec = chk.mapping(body, "reply", ("text", "template"))
        if not spec:
            raise chk.Problem("reply needs text, a template, or both")
        text = _localized(spec["text"], "reply.text", allowed) if "text" in spec else None
        tpl = _template(spec["template"], allowed) if "template" in spec else None
        return Reply(text, tpl)
    if key == "emit_event":
        spec = body if isinstance(body, dict) else {"name": body}
        name = chk.string(chk.mapping(spec, "emit_event", ("name",)).get("name"), "emit_event.name")
        if not _EVENT.match(name):
            raise chk.Problem(f"emit_event name {name!r} must be lower-case like order.shipped")
        return EmitEvent(name)
    spec = chk.mapping(body, "hand_over", ("tag", "priority", "note"))
    tag = chk.tags(spec.get("tag", "handover"), "hand_over.tag")
    prio = spec.get("priority", "high")
    note = chk.text(spec["note"], "hand_over.note", allowed) if spec.get("note") else None
    return HandOver(
        tag[0], None if prio is None else chk.priority(prio, "hand_over.priority"), note
    )


_ACTIONS = (
    "add_tags",
    "remove_tags",
    "set_priority",
    "open_ticket",
    "create_task",
    "reply",
    "emit_event",
    "hand_over",
)


# --- rules and files -----------------------------------------------------------------


_RULE_KEYS = ("name", "description", "enabled", "when", "if", "then", "stop", "unless_replied")


def _rule(raw: dict[str, Any], source: Path) -> Rule:
    spec = chk.mapping(raw, "rule", _RULE_KEYS)
    name = str(spec["name"])
    kind, body = chk.single(spec.get("when"), "when", tuple(_TRIGGERS))
    trigger = _TRIGGERS[kind](body)
    conditions = spec.get("if") or []
    if not isinstance(conditions, list):
        raise chk.Problem("'if' must be a list of conditions")
    actions = spec.get("then")
    if not isinstance(actions, list) or not actions:
        raise chk.Problem("'then' must be a non-empty list of actions")
    allowed = COMMON_PLACEHOLDERS | TRIGGER_PLACEHOLDERS[kind]
    return Rule(
        name=name,
        trigger=trigger,
        conditions=tuple(_condition(c, f"if[{i}]") for i, c in enumerate(conditions)),
        actions=tuple(_action(a, f"then[{i}]", allowed) for i, a in enumerate(actions)),
        description=chk.string(spec.get("description", ""), "description", empty=True),
        stop=chk.flag(spec.get("stop", False), "stop"),
        unless_replied=chk.flag(spec.get("unless_replied", False), "unless_replied"),
        enabled=chk.flag(spec.get("enabled", True), "enabled"),
        source=source,
    )


def load_file(path: Path) -> list[Rule]:
    """The rules of one file, in order; raises :class:`RuleFileError`."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RuleFileError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise RuleFileError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise RuleFileError(f"{path}: not valid YAML{at}") from None
    if not isinstance(doc, dict) or set(doc) - {"version", "rules"}:
        raise RuleFileError(f"{path}: expected a mapping with 'version: 1' and 'rules: [...]'")
    if doc.get("version") != 1:
        raise RuleFileError(f"{path}: 'version' must be 1")
    raw_rules = doc.get("rules") or []
    if not isinstance(raw_rules, list):
        raise RuleFileError(f"{path}: 'rules' must be a list")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_rules):
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str) or not _NAME.match(name):
            label = f"rule #{index + 1}"
            if name is None:
                raise RuleFileError(f"{path}: {label}: needs a 'name'")
            raise RuleFileError(
                f"{path}: {label}: name {name!r} must be lower-case letters, "
                "digits, '-', '_' or '.' (at most 120)"
            )
        if name in seen:
            raise RuleFileError(f"{path}: rule '{name}': the name is used twice in this file")
        seen.add(name)
        try:
            rules.append(_rule(raw, path))
        except chk.Problem as exc:
            raise RuleFileError(f"{path}: rule '{name}': {exc}") from None
    return rules


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if path.exists():
        return [path]
    raise RuleFileError(f"{path}: no such file or directory")


def load_rules(paths: Iterable[Path | str]) -> RuleSet:
    """Load files and directories (their ``*.yaml``, by name) in order; names must be unique."""
    rules: list[Rule] = []
    files: list[Path] = []
    where: dict[str, Path] = {}
    for given in paths:
        for file in _files(Path(given)):
            files.append(file)
            for rule in load_file(file):
                if rule.name in where:
                    raise RuleFileError(
                        f"{file}: rule '{rule.name}': the name is already "
                        f"used in {where[rule.name]}"
                    )
                where[rule.name] = file
                rules.append(rule)
    return RuleSet(tuple(rules), tuple(files))


def load_ruleset(rules_dir: str | Path | None = None) -> RuleSet:
    """The shipped defaults, overlaid by the admin's directory (the ``rules_dir`` setting).

    A rule in the admin's directory with the name of a default rule replaces it in place
    (``enabled: false`` turns a default off); other rules of the admin run after the defaults.
    """
    defaults = load_rules([DEFAULTS_DIR])
    if not rules_dir:
        return defaults
    own = load_rules([Path(rules_dir)])
    mine = {r.name: r for r in own.rules}
    merged = [mine.pop(r.name, r) for r in defaults.rules]
    merged.extend(r for r in own.rules if r.name in mine)
    return RuleSet(tuple(merged), defaults.files + own.files)
