"""What the engine decides: planned actions, each carrying the rule and firing key it came
from. They are plain data, so ``wacrm rules test`` can print them and
:func:`wacrm.rules.actions.apply_actions` can carry them out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from wacrm.model import Priority


@dataclass(frozen=True, slots=True)
class TagsChange:
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"+{t}" for t in self.add] + [f"-{t}" for t in self.remove]
        return "tags " + " ".join(parts)


@dataclass(frozen=True, slots=True)
class PriorityChange:
    priority: Priority

    def describe(self) -> str:
        return f"set priority {self.priority.value}"


@dataclass(frozen=True, slots=True)
class TicketOpen:
    subject: str

    def describe(self) -> str:
        return f"open ticket {self.subject!r} (unless one is open)"


@dataclass(frozen=True, slots=True)
class TaskCreate:
    subject: str
    due_at: datetime
    owner: str | None = None

    def describe(self) -> str:
        owner = f" for {self.owner}" if self.owner else ""
        return f"create task {self.subject!r}{owner}, due {self.due_at.isoformat()}"


@dataclass(frozen=True, slots=True)
class ReplySend:
    """A WhatsApp send: ``content`` is the Cloud API body without ``to``/``messaging_product``."""

    kind: str  # text | template
    content: dict[str, Any]
    text: str | None = None  # what the customer reads (text replies), for the messages row
    language: str | None = None  # the language picked for the contact
    fallback: dict[str, Any] | None = None  # a template to send if the window has closed

    def describe(self) -> str:
        if self.kind == "text":
            lang = f" [{self.language}]" if self.language else ""
            also = f" (or {_template_name(self.fallback)} if the 24 h window has closed)"
            return f"reply text{lang}: {self.text!r}" + (also if self.fallback else "")
        return f"reply {_template_name(self.content)}"


def _template_name(content: dict[str, Any] | None) -> str:
    tpl = (content or {}).get("template") or {}
    return f"template {tpl.get('name')!r} in {(tpl.get('language') or {}).get('code')}"


@dataclass(frozen=True, slots=True)
class EventEmit:
    name: str
    data: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"emit event {self.name!r}"


@dataclass(frozen=True, slots=True)
class Skipped:
    """An action that cannot be done now, kept so the reason is visible."""

    what: str
    reason: str

    def describe(self) -> str:
        return f"skip {self.what}: {self.reason}"


Effect = TagsChange | PriorityChange | TicketOpen | TaskCreate | ReplySend | EventEmit | Skipped


@dataclass(frozen=True, slots=True)
class PlannedAction:
    rule: str
    firing_key: str  # with the rule and account: what makes a firing happen once
    reason: str  # why the rule fired, for people
    effect: Effect
    message_row_id: int | None = None  # messages.id the firing is about, when there is one

    def describe(self) -> str:
        return self.effect.describe()
