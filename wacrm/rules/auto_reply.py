"""Keyword auto-replies: the first, deliberately small, rule set.

A fuller rules engine will replace this, so the interface stays narrow: load a rule file,
then ask :meth:`AutoReplies.match` about one inbound message. Rule files are data; replies
are plain text with ``{placeholder}`` substitution only (no format specs, attributes or
expressions, so an edited rule file cannot reach into Python objects).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wacrm.model import InboundMessage, MessageType

DEFAULT_RULES = Path(__file__).parent / "defaults" / "auto_replies.yaml"
MAX_REPLY_CHARS = 4096  # Cloud API text body limit
# Only this much of a message is searched for keywords: they sit near the start, and a 64 kB
# paste should not cost more than a short question.
_MAX_SCAN_CHARS = 4096

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WORD = re.compile(r"\w+")
_TATWEEL = "\u0640"  # Arabic elongation: typographic only, never changes the word
_MATCH_TIME = frozenset({"name", "type"})
_TICKET_TIME = frozenset({"ticket_id"})
_TRIGGERS = frozenset({"keyword", "ticket_opened"})

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


class RulesError(ValueError):
    """A rule file is missing or malformed; the message names the file and the rule."""


@dataclass(frozen=True, slots=True)
class Reply:
    rule: str
    text: str


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    trigger: str
    keywords: tuple[tuple[str, ...], ...]  # normalised word sequences
    template: str


def normalize(text: str) -> str:
    """Case- and accent-free form for matching: "PREÇO" and "preco" become the same.

    NFKD splits letters from their marks (and folds compatibility forms such as full-width
    letters); dropping the combining marks removes accents and Arabic diacritics.
    """
    decomposed = unicodedata.normalize("NFKD", text.casefold().replace(_TATWEEL, ""))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(normalize(text)))


def _contains(haystack: tuple[str, ...], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


class AutoReplies:
    def __init__(self, rules: tuple[_Rule, ...], variables: Mapping[str, str]) -> None:
        self._rules = rules
        self._variables = dict(variables)

    @property
    def rule_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self._rules)

    @classmethod
    def load(
        cls, path: str | Path | None = None, *, variables: Mapping[str, str] | None = None
    ) -> AutoReplies:
        """Load ``path`` (the packaged defaults when None).

        ``variables`` fill installation placeholders such as ``{price_list}``; a placeholder
        no one can fill is an error now rather than a broken reply later.
        """
        source = Path(path) if path is not None else DEFAULT_RULES
        try:
            doc = yaml.safe_load(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RulesError(f"{source}: rule file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RulesError(f"{source}: cannot be read ({exc})") from None
        except yaml.YAMLError as exc:
            raise RulesError(f"{source}: not valid YAML ({exc})") from None
        variables = dict(variables or {})
        return cls(_parse(doc, str(source), frozenset(variables)), variables)

    def match(
        self, message: InboundMessage, *, opened_ticket: bool, ticket_id: int | None = None
    ) -> Reply | None:
        """The reply for ``message``, if a rule answers it.

        Keyword rules come first, in file order; ``ticket_opened`` rules answer only when
        ``opened_ticket`` is true and no keyword matched (``ticket_id`` fills ``{ticket_id}``).
        """
        text_words = words(message.text[:_MAX_SCAN_CHARS]) if message.text else ()
        values = {
            **self._variables,
            "name": message.profile_name or "there",
            "type": _TYPE_WORDS.get(message.type, message.type.value.replace("_", " ")),
        }
        for rule in self._rules:
            if rule.trigger == "keyword" and any(_contains(text_words, k) for k in rule.keywords):
                return Reply(rule.name, _render(rule.template, values))
        if not opened_ticket:
            return None
        values["ticket_id"] = "" if ticket_id is None else str(ticket_id)
        for rule in self._rules:
            if rule.trigger == "ticket_opened":
                return Reply(rule.name, _render(rule.template, values))
        return None


def _render(template: str, values: Mapping[str, str]) -> str:
    text = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)
    return text[:MAX_REPLY_CHARS]


def _parse(doc: Any, source: str, variables: frozenset[str]) -> tuple[_Rule, ...]:
    if not isinstance(doc, dict):
        raise RulesError(f"{source}: the top level must be a mapping")
    if doc.get("version") != 1:
        raise RulesError(f"{source}: 'version' must be 1, got {doc.get('version')!r}")
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list):
        raise RulesError(f"{source}: 'rules' must be a list")
    rules = tuple(_rule(item, i, source, variables) for i, item in enumerate(raw_rules, 1))
    names = [r.name for r in rules]
    for name in names:
        if names.count(name) > 1:
            raise RulesError(f"{source}: rule {name!r} is defined twice")
    return rules


def _rule(item: Any, index: int, source: str, variables: frozenset[str]) -> _Rule:
    if not isinstance(item, dict):
        raise RulesError(f"{source}: rules[{index}] must be a mapping")
    unknown = set(item) - {"name", "when", "keywords", "reply"}
    if unknown:
        raise RulesError(f"{source}: rules[{index}] has unknown keys {sorted(map(str, unknown))}")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 120:
        raise RulesError(f"{source}: rules[{index}] needs a 'name' of 1-120 characters")
    where = f"{source}: rule {name!r}"
    trigger = item.get("when")
    if trigger not in _TRIGGERS:
        raise RulesError(f"{where}: 'when' must be one of {sorted(_TRIGGERS)}, got {trigger!r}")
    template = item.get("reply")
    if not isinstance(template, str) or not template.strip():
        raise RulesError(f"{where}: 'reply' must be non-empty text")
    if len(template) > MAX_REPLY_CHARS:
        raise RulesError(f"{where}: 'reply' is longer than {MAX_REPLY_CHARS} characters")
    allowed = _MATCH_TIME | variables | (_TICKET_TIME if trigger == "ticket_opened" else set())
    for placeholder in _PLACEHOLDER.findall(template):
        if placeholder not in allowed:
            raise RulesError(
                f"{where}: reply uses {{{placeholder}}}, which is not available here "
                f"(available: {', '.join(sorted(allowed))})"
            )
    keywords: tuple[tuple[str, ...], ...] = ()
    if trigger == "keyword":
        raw = item.get("keywords")
        if not isinstance(raw, list) or not raw:
            raise RulesError(f"{where}: 'keywords' must be a non-empty list")
        if not all(isinstance(k, str) and words(k) for k in raw):
            raise RulesError(f"{where}: every keyword must be text with at least one letter")
        keywords = tuple(words(k) for k in raw)
    elif "keywords" in item:
        raise RulesError(f"{where}: 'keywords' only applies to 'when: keyword' rules")
    return _Rule(name=name, trigger=str(trigger), keywords=keywords, template=template)


__all__ = ["DEFAULT_RULES", "AutoReplies", "Reply", "RulesError", "normalize", "words"]
