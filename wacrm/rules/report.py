"""What ``wacrm rules check`` and ``wacrm rules test`` print; no I/O besides reading rules."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby

from wacrm.model import MessageType
from wacrm.rules.engine import RuleEngine
from wacrm.rules.events import ContactView, MessageEvent
from wacrm.rules.language import LanguageDetector
from wacrm.rules.plans import PlannedAction
from wacrm.rules.schema import Rule, RuleSet


def _summary(rule: Rule) -> str:
    actions = ", ".join(_action_name(a) for a in rule.actions)
    flags = "" if rule.enabled else "  (disabled)"
    return f"  - {rule.name} [{rule.trigger.kind}] → {actions}{flags}"


def _action_name(action: object) -> str:
    name = type(action).__name__
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def check_lines(ruleset: RuleSet) -> Iterator[str]:
    """Rules per file, then a count."""
    for source, rules in groupby(ruleset.rules, key=lambda r: r.source):
        yield f"{source}:"
        yield from (_summary(r) for r in rules)
    files = len({r.source for r in ruleset.rules})
    yield f"ok: {len(ruleset.rules)} rules in {files} files"


@dataclass(frozen=True, slots=True)
class TrialResult:
    language: str | None
    language_note: str
    planned: list[PlannedAction]


def trial(
    ruleset: RuleSet,
    *,
    phone: str,
    message: str,
    message_type: MessageType,
    now: datetime,
    values: dict[str, str],
    language: str | None = None,
    detector: LanguageDetector | None = None,
    unread: int = 1,
) -> TrialResult:
    """What the rules would do with one inbound message from a new contact, changing nothing."""
    note = "given"
    if language is None and detector is not None:
        found = detector.detect(message, phone)
        language = found.language if found else None
        note = (
            f"detected, confidence {found.confidence:.2f}"
            + (", chosen by the country code" if found.by_prior else "")
            if found
            else "not detected (too little text)"
        )
    contact = ContactView(
        id=None, phone=phone, language=language, unread_count=unread, last_inbound_at=now
    )
    event = MessageEvent("wamid.trial", message_type, message, now)
    planned = RuleEngine(ruleset, values).evaluate(event, contact, now)
    return TrialResult(language, note, planned)


def trial_lines(result: TrialResult) -> Iterator[str]:
    yield f"language: {result.language or '-'} ({result.language_note})"
    if not result.planned:
        yield "no rule fires"
        return
    for index, (rule, group) in enumerate(groupby(result.planned, key=lambda a: a.rule), 1):
        items: Sequence[PlannedAction] = list(group)
        yield f"{index}. {rule}: {items[0].reason}"
        yield from (f"   {item.describe()}" for item in items)
    yield "(nothing was changed)"
