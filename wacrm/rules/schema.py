"""What a rule is: one trigger, conditions that must all hold, and actions, in that order.

These are the checked, typed form of a rule file (see :mod:`wacrm.rules.loader`). Text that
a rule sends or writes may hold ``{name}``-style placeholders from a fixed set only
(:data:`PLACEHOLDERS`), checked at load time; there is no expression language.
"""

from __future__ import annotations

import enum
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from wacrm.model import MessageType, Priority
from wacrm.rules.matching import TextMatcher

# Placeholders every rule may use, and those that only make sense for one trigger.
COMMON_PLACEHOLDERS = frozenset(
    {"name", "first_name", "phone", "language", "order_status_code", "priority", "price_list"}
)
TRIGGER_PLACEHOLDERS: Mapping[str, frozenset[str]] = {
    "message_received": frozenset({"keyword", "type", "ticket_id"}),
    "no_reply": frozenset({"hours_waiting"}),
    "field_changed": frozenset({"field", "old_value", "new_value"}),
    "unread_at_least": frozenset({"unread_count"}),
    "message_failed": frozenset({"error_code", "error_title"}),
}
PLACEHOLDERS = COMMON_PLACEHOLDERS.union(*TRIGGER_PLACEHOLDERS.values())

# Contact fields a condition may test, and those whose CRM-side change is a trigger.
CONDITION_FIELDS = frozenset(
    {
        "name",
        "phone",
        "country",
        "language",
        "order_status_code",
        "priority",
        "unread_count",
        "tags",
    }
)
CHANGE_FIELDS = frozenset({"name", "phone", "language", "order_status_code", "priority", "tags"})


class RuleFileError(ValueError):
    """A rule file is unusable; the message reads ``<file>: rule '<name>': <problem>``."""


def placeholders_in(text: str) -> list[str]:
    """The placeholder names in ``text``; raises ValueError for anything but plain ``{name}``."""
    names = []
    for _literal, name, spec, conversion in string.Formatter().parse(text):
        if name is None:
            continue
        if spec or conversion or not name.isidentifier():
            raise ValueError(
                f"placeholder {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} is not a plain {{name}}"
            )
        names.append(name)
    return names


# --- triggers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """An inbound message; with keywords/patterns, one of them must occur in its text."""

    matcher: TextMatcher = field(default_factory=TextMatcher)
    types: frozenset[MessageType] = frozenset()  # empty: any type
    opened_ticket: bool | None = None  # True: only a message that opened a new ticket

    kind = "message_received"


@dataclass(frozen=True, slots=True)
class NoReply:
    """The customer's first unanswered message has waited ``hours`` without an answer."""

    hours: float = 48.0

    kind = "no_reply"

    @property
    def delay(self) -> timedelta:
        return timedelta(hours=self.hours)


@dataclass(frozen=True, slots=True)
class FieldChanged:
    """A contact field changed in the CRM, optionally from/to given values."""

    field: str
    to: frozenset[str] = frozenset()  # empty: any new value
    from_: frozenset[str] = frozenset()  # empty: any old value

    kind = "field_changed"


@dataclass(frozen=True, slots=True)
class UnreadAtLeast:
    count: int

    kind = "unread_at_least"


@dataclass(frozen=True, slots=True)
class MessageFailed:
    """A message we sent failed; with error codes, only those."""

    error_codes: frozenset[str] = frozenset()

    kind = "message_failed"


Trigger = MessageReceived | NoReply | FieldChanged | UnreadAtLeast | MessageFailed


# --- conditions ----------------------------------------------------------------------


class FieldOp(enum.StrEnum):
    EQUALS = "equals"
    NOT_EQUALS = "not_equals"
    IN = "in"
    NOT_IN = "not_in"
    EMPTY = "empty"
    CONTAINS = "contains"
    NOT_CONTAINS = "not_contains"
    AT_LEAST = "at_least"
    AT_MOST = "at_most"


@dataclass(frozen=True, slots=True)
class ContactField:
    """``field`` compared with ``operand`` (a string, a set of strings, a number or a flag)."""

    field: str
    op: FieldOp
    operand: str | frozenset[str] | int | bool


@dataclass(frozen=True, slots=True)
class BusinessHours:
    """True when ``now`` falls on ``days`` between ``start`` and ``end`` in ``timezone``
    (``inside: false`` inverts it). An ``end`` before ``start`` spans midnight."""

    timezone: ZoneInfo
    days: frozenset[int]  # 0 = Monday
    start: time
    end: time
    inside: bool = True


Condition = ContactField | BusinessHours


# --- actions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalizedText:
    """Text per language (ISO 639-1), with ``default`` for any other language."""

    default: str
    by_language: Mapping[str, str] = field(default_factory=dict)

    def pick(self, language: str | None) -> tuple[str, str | None]:
        """The text for ``language`` and the language it is in (None for the default)."""
        if language and language in self.by_language:
            return self.by_language[language], language
        return self.default, None


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    """An approved WhatsApp template; ``languages`` maps the contact's language to the
    template's language code (``pt`` → ``pt_BR``); ``fallback`` is used for any other."""

    name: str
    fallback: str
    languages: Mapping[str, str] = field(default_factory=dict)
    params: tuple[str, ...] = ()  # body parameters, each text with placeholders

    def language_for(self, language: str | None) -> str:
        return self.languages.get(language or "", self.fallback)


@dataclass(frozen=True, slots=True)
class AddTags:
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RemoveTags:
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SetPriority:
    priority: Priority


@dataclass(frozen=True, slots=True)
class OpenTicket:
    subject: str


@dataclass(frozen=True, slots=True)
class CreateTask:
    subject: str
    due_in: timedelta = timedelta(0)
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """Free text inside the 24 h window; the template outside it (or always, if no text)."""

    text: LocalizedText | None = None
    template: TemplateSpec | None = None


@dataclass(frozen=True, slots=True)
class EmitEvent:
    name: str


@dataclass(frozen=True, slots=True)
class HandOver:
    """Hand the conversation to a person: tag it, raise its priority, tell subscribers."""

    tag: str = "handover"
    priority: Priority | None = Priority.HIGH
    note: str | None = None


Action = AddTags | RemoveTags | SetPriority | OpenTicket | CreateTask | Reply | EmitEvent | HandOver


# --- rules ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    trigger: Trigger
    actions: tuple[Action, ...]
    conditions: tuple[Condition, ...] = ()
    description: str = ""
    stop: bool = False  # no later rule runs for the same event when this one fires
    unless_replied: bool = False  # skip when an earlier rule already replies to the event
    enabled: bool = True
    source: Path | None = None


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Rules in the order they run: file by file (sorted by name), top to bottom."""

    rules: tuple[Rule, ...] = ()
    files: tuple[Path, ...] = ()

    def enabled(self, kind: str | None = None) -> tuple[Rule, ...]:
        return tuple(
            r for r in self.rules if r.enabled and (kind is None or r.trigger.kind == kind)
        )
