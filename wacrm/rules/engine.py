"""The rule engine: an event and a contact snapshot in, planned actions out.

It is pure (no I/O, the clock is an argument), so the inbox processor, the timer and
``wacrm rules test`` all run the same code. Rules run in order; a rule sees the tags and
priority that earlier rules planned for the same event, ``stop: true`` ends the run, and
``unless_replied: true`` makes a rule a fallback that stays quiet if an earlier one replied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

from wacrm.model import MessageType
from wacrm.rules.events import (
    ContactView,
    Event,
    FieldChangeEvent,
    MessageEvent,
    NoReplyEvent,
    StatusEvent,
)
from wacrm.rules.plans import (
    Effect,
    EventEmit,
    PlannedAction,
    PriorityChange,
    ReplySend,
    Skipped,
    TagsChange,
    TaskCreate,
    TicketOpen,
)
from wacrm.rules.schema import (
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
    MessageFailed,
    MessageReceived,
    NoReply,
    OpenTicket,
    RemoveTags,
    Reply,
    Rule,
    RuleSet,
    SetPriority,
    TemplateSpec,
    Trigger,
    UnreadAtLeast,
)

_TEXT_MAX = 4096  # Cloud API text body limit

# Which triggers an event can set off.
_KINDS: Mapping[type, tuple[str, ...]] = {
    MessageEvent: ("message_received", "unread_at_least"),
    StatusEvent: ("message_failed",),
    FieldChangeEvent: ("field_changed",),
    NoReplyEvent: ("no_reply",),
}


# How {type} reads in a reply ("we received your image").
_TYPE_WORDS = {
    MessageType.TEXT: "message",
    MessageType.INTERACTIVE: "message",
    MessageType.BUTTON: "message",
    MessageType.CONTACTS: "contact card",
    MessageType.REQUEST_WELCOME: "message",
    MessageType.UNSUPPORTED: "message",
    MessageType.UNKNOWN: "message",
}


@dataclasses.dataclass(frozen=True, slots=True)
class _Hit:
    reason: str
    key: str
    values: dict[str, str]


class RuleEngine:
    """Evaluates a :class:`RuleSet`; ``values`` fills static placeholders (``price_list``)."""

    def __init__(self, ruleset: RuleSet, values: Mapping[str, str] | None = None) -> None:
        self.ruleset = ruleset
        self._values = dict(values or {})
        # Sorted out once: each event looks only at the rules it can set off.
        self._for_event: dict[type, tuple[Rule, ...]] = {
            event_type: tuple(r for r in ruleset.enabled() if r.trigger.kind in kinds)
            for event_type, kinds in _KINDS.items()
        }

    def evaluate(
        self,
        event: Event,
        contact: ContactView,
        now: datetime,
        only: Collection[str] | None = None,
    ) -> list[PlannedAction]:
        """Planned actions of every rule the event sets off, in rule order.

        ``only`` restricts evaluation to the named rules (the timer checks one rule at a time).
        """
        planned: list[PlannedAction] = []
        view = contact
        for rule in self._for_event[type(event)]:
            if only is not None and rule.name not in only:
                continue
            if rule.unless_replied and any(isinstance(p.effect, ReplySend) for p in planned):
                continue
            hit = _trigger(rule.trigger, event, view, now)
            if hit is None or not all(_holds(c, view, now) for c in rule.conditions):
                continue
            values = {**self._values, **_contact_values(view), **hit.values}
            row_id = _row_id(event)
            for action in rule.actions:
                for effect in _plan(action, event, view, now, values):
                    planned.append(PlannedAction(rule.name, hit.key, hit.reason, effect, row_id))
                    view = _after(view, effect)
            if rule.stop:
                break
        return planned


# --- triggers ------------------------------------------------------------------------


def _row_id(event: Event) -> int | None:
    if isinstance(event, MessageEvent):
        return event.row_id
    if isinstance(event, NoReplyEvent):
        return event.episode_message_id
    if isinstance(event, StatusEvent):
        return event.row_id
    return None


def _trigger(trigger: Trigger, event: Event, view: ContactView, now: datetime) -> _Hit | None:
    if isinstance(trigger, MessageReceived) and isinstance(event, MessageEvent):
        if trigger.types and event.type not in trigger.types:
            return None
        opened = event.opened_ticket_id is not None
        if trigger.opened_ticket is not None and trigger.opened_ticket != opened:
            return None
        key = f"msg:{event.message_id}"
        values = {
            "keyword": "",
            "type": _TYPE_WORDS.get(event.type, event.type.value.replace("_", " ")),
            "ticket_id": "" if event.opened_ticket_id is None else str(event.opened_ticket_id),
        }
        if trigger.matcher.empty:
            what = "opened a ticket" if trigger.opened_ticket else "received"
            return _Hit(f"{event.type.value} message {what}", key, values)
        word = trigger.matcher.first_match(event.text)
        if word is None:
            return None
        return _Hit(f"message contains {word!r}", key, {**values, "keyword": word})
    if isinstance(trigger, UnreadAtLeast) and isinstance(event, MessageEvent):
        if view.unread_count < trigger.count:
            return None
        # One firing per unanswered stretch, not one per further unread message.
        episode = view.awaiting_since_id or event.message_id
        return _Hit(
            f"{view.unread_count} unread (≥ {trigger.count})",
            f"unread:{view.id}:{episode}",
            {"unread_count": str(view.unread_count)},
        )
    if isinstance(trigger, MessageFailed) and isinstance(event, StatusEvent):
        if not event.failed:
            return None
        if trigger.error_codes and (event.error_code or "") not in trigger.error_codes:
            return None
        return _Hit(
            f"message {event.message_id} failed ({event.error_code or 'no code'})",
            f"failed:{event.row_id or event.message_id}",
            {"error_code": event.error_code or "", "error_title": event.error_title or ""},
        )
    if isinstance(trigger, FieldChanged) and isinstance(event, FieldChangeEvent):
        return _field_hit(trigger, event, view)
    if isinstance(trigger, NoReply) and isinstance(event, NoReplyEvent):
        waited = now - event.since
        if waited < trigger.delay:
            return None
        hours = int(waited / timedelta(hours=1))
        return _Hit(
            f"no answer for {hours} h (≥ {trigger.hours:g} h)",
            f"noreply:{view.id}:{event.episode_message_id}",
            {"hours_waiting": str(hours)},
        )
    return None


def _field_hit(trigger: FieldChanged, event: FieldChangeEvent, view: ContactView) -> _Hit | None:
    if event.field != trigger.field or event.old == event.new:
        return None
    if trigger.to and _fold(event.new) not in {_fold(v) for v in trigger.to}:
        return None
    if trigger.from_ and _fold(event.old) not in {_fold(v) for v in trigger.from_}:
        return None
    change = event.change_id or f"{event.new}@{event.at.isoformat()}"
    return _Hit(
        f"{event.field} changed {event.old!r} → {event.new!r}",
        f"change:{view.id}:{event.field}:{change}",
        {"field": event.field, "old_value": event.old or "", "new_value": event.new or ""},
    )


# --- conditions ----------------------------------------------------------------------


def _fold(value: str | None) -> str:
    return (value or "").strip().casefold()


def _field_value(view: ContactView, name: str) -> Any:
    if name == "country":
        return view.country
    if name == "priority":
        return view.priority.value if view.priority else None
    return getattr(view, name)


def _holds(cond: Condition, view: ContactView, now: datetime) -> bool:
    if isinstance(cond, BusinessHours):
        return _in_hours(cond, now) == cond.inside
    return _field_holds(cond, _field_value(view, cond.field))


def _field_holds(cond: ContactField, value: Any) -> bool:
    op, operand = cond.op, cond.operand
    if op is FieldOp.EMPTY:
        return (value in (None, "") or value == frozenset()) == operand
    if op is FieldOp.AT_LEAST:
        return isinstance(operand, int) and int(value or 0) >= operand
    if op is FieldOp.AT_MOST:
        return isinstance(operand, int) and int(value or 0) <= operand
    if op in (FieldOp.CONTAINS, FieldOp.NOT_CONTAINS):
        present = _fold(str(operand)) in {_fold(t) for t in value}
        return present == (op is FieldOp.CONTAINS)
    text = _fold(None if value is None else str(value))
    if op in (FieldOp.IN, FieldOp.NOT_IN):
        assert isinstance(operand, frozenset)
        return (text in {_fold(v) for v in operand}) == (op is FieldOp.IN)
    return (text == _fold(str(operand))) == (op is FieldOp.EQUALS)


def _in_hours(cond: BusinessHours, now: datetime) -> bool:
    local = now.astimezone(cond.timezone)
    day, clock = local.weekday(), local.time().replace(tzinfo=None)
    if cond.start <= cond.end:
        return day in cond.days and cond.start <= clock < cond.end
    # Hours spanning midnight belong to the day they started on.
    return (day in cond.days and clock >= cond.start) or (
        (day - 1) % 7 in cond.days and clock < cond.end
    )


# --- actions -------------------------------------------------------------------------


def _contact_values(view: ContactView) -> dict[str, str]:
    name = (view.name or "").strip()
    return {
        "name": name,
        "first_name": name.split(" ", 1)[0] if name else "",
        "phone": view.phone or "",
        "language": view.language or "",
        "order_status_code": view.order_status_code or "",
        "priority": view.priority.value if view.priority else "",
    }


def _render(text: str, values: Mapping[str, str]) -> str:
    # Placeholders were checked at load against a fixed set; absent values render empty.
    return text.format_map(_Blank(values))


def _one_line(text: str) -> str:
    # A subject with an empty placeholder ("Answer  on WhatsApp") reads better closed up.
    return " ".join(text.split())


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def _plan(
    action: Action, event: Event, view: ContactView, now: datetime, values: Mapping[str, str]
) -> list[Effect]:
    if isinstance(action, AddTags):
        return [TagsChange(add=action.tags)]
    if isinstance(action, RemoveTags):
        return [TagsChange(remove=action.tags)]
    if isinstance(action, SetPriority):
        return [PriorityChange(action.priority)]
    if isinstance(action, OpenTicket):
        return [TicketOpen(_one_line(_render(action.subject, values)))]
    if isinstance(action, CreateTask):
        subject = _one_line(_render(action.subject, values))
        return [TaskCreate(subject, now + action.due_in, action.owner)]
    if isinstance(action, EmitEvent):
        return [EventEmit(action.name, _event_data(event, values))]
    if isinstance(action, HandOver):
        effects: list[Effect] = [TagsChange(add=(action.tag,))]
        if action.priority is not None:
            effects.append(PriorityChange(action.priority))
        data = _event_data(event, values)
        if action.note:
            data["note"] = _render(action.note, values)
        effects.append(EventEmit("handover", data))
        return effects
    return [_reply(action, event, view, now, values)]


def _event_data(event: Event, values: Mapping[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {"trigger": type(event).__name__}
    if isinstance(event, MessageEvent | StatusEvent):
        data["message_id"] = event.message_id
    if isinstance(event, FieldChangeEvent):
        data.update(field=event.field, old=event.old, new=event.new)
    data.update({k: v for k, v in values.items() if k in ("keyword", "error_code") and v})
    return data


def _reply(
    action: Reply, event: Event, view: ContactView, now: datetime, values: Mapping[str, str]
) -> Effect:
    if view.recipient is None:
        return Skipped("reply", "the contact has no phone number to send to")
    # The inbound message being answered opens the window, even if the view predates it.
    open_window = isinstance(event, MessageEvent) or view.in_service_window(now)
    if action.text is not None and open_window:
        raw, lang = action.text.pick(view.language)
        body = _render(raw, values)[:_TEXT_MAX]
        if not body.strip():
            return Skipped("reply", "the text is empty once filled in")
        content = {"type": "text", "text": {"body": body, "preview_url": False}}
        # The window may close before the send: the outbox then sends the template instead.
        fallback = _template(action.template, view, values) if action.template else None
        return ReplySend("text", content, text=body, language=lang, fallback=fallback)
    if action.template is not None:
        code = action.template.language_for(view.language)
        return ReplySend("template", _template(action.template, view, values), language=code)
    return Skipped("reply", "outside the 24 h window, and the rule has no template")


def _template(spec: TemplateSpec, view: ContactView, values: Mapping[str, str]) -> dict[str, Any]:
    template: dict[str, Any] = {
        "name": spec.name,
        "language": {"code": spec.language_for(view.language)},
    }
    if spec.params:
        # Meta rejects an empty parameter; a dash keeps the message readable.
        params = [{"type": "text", "text": _render(p, values) or "-"} for p in spec.params]
        template["components"] = [{"type": "body", "parameters": params}]
    return {"type": "template", "template": template}


def _after(view: ContactView, effect: Effect) -> ContactView:
    """The contact as later rules see it once ``effect`` is applied."""
    if isinstance(effect, TagsChange):
        tags = (view.tags | set(effect.add)) - set(effect.remove)
        return dataclasses.replace(view, tags=frozenset(tags))
    if isinstance(effect, PriorityChange):
        return dataclasses.replace(view, priority=effect.priority)
    return view
