"""Checks for single values of a rule file; each raises :class:`Problem` naming the key.

The loader adds the file and rule to the message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from wacrm.model import Priority
from wacrm.rules.schema import Reply, RuleSet, placeholders_in

_TAG = re.compile(r"^[^\s,;][^,;]{0,63}$")  # CRM multi-selects split on , or ;


class Problem(Exception):
    """A problem inside one rule; the loader adds the file and rule name."""


def mapping(value: Any, where: str, allowed: Iterable[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Problem(f"{where} must be a mapping")
    unknown = sorted(set(map(str, value)) - set(allowed))
    if unknown:
        raise Problem(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    return value


def single(value: Any, where: str, allowed: Iterable[str]) -> tuple[str, Any]:
    """A mapping with exactly one key, e.g. ``{add_tags: [...]}``."""
    if not isinstance(value, dict) or len(value) != 1:
        raise Problem(f"{where} must be a mapping with one key, one of: {', '.join(allowed)}")
    ((key, body),) = value.items()
    if key not in allowed:
        raise Problem(f"{where}: unknown {key!r} (known: {', '.join(allowed)})")
    return str(key), body


def string(value: Any, where: str, *, empty: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Problem(f"{where} must be text")
    text = str(value).strip()
    if not text and not empty:
        raise Problem(f"{where} must not be empty")
    return text


def strings(value: Any, where: str) -> tuple[str, ...]:
    """One string or a list of them."""
    items = value if isinstance(value, list) else [value]
    return tuple(
        string(v, f"{where}[{i}]" if isinstance(value, list) else where)
        for i, v in enumerate(items)
    )


def number(value: Any, where: str, *, minimum: float = 0, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Problem(f"{where} must be a number")
    if integer and not isinstance(value, int):
        raise Problem(f"{where} must be a whole number")
    if value < minimum:
        raise Problem(f"{where} must be at least {minimum:g}")
    return float(value)


def flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise Problem(f"{where} must be true or false")
    return value


def priority(value: Any, where: str) -> Priority:
    try:
        return Priority(string(value, where).lower())
    except ValueError:
        raise Problem(f"{where} must be one of {', '.join(p.value for p in Priority)}") from None


def tags(value: Any, where: str) -> tuple[str, ...]:
    tags = strings(value, where)
    for tag in tags:
        if not _TAG.match(tag):
            raise Problem(f"{where}: tag {tag!r} must be 1-64 characters without , or ;")
    return tags


def text(value: Any, where: str, allowed: frozenset[str]) -> str:
    text = string(value, where)
    try:
        names = placeholders_in(text)
    except ValueError as exc:
        raise Problem(f"{where}: {exc}") from None
    for name in names:
        if name not in allowed:
            raise Problem(
                f"{where}: unknown placeholder {{{name}}} "
                f"(allowed here: {', '.join('{' + n + '}' for n in sorted(allowed))})"
            )
    return text


def reply_texts(ruleset: RuleSet, values: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """(where, text) for every text an auto-reply can send, for the content policy of
    ``wacrm rules check``. Placeholders in ``values`` (``{price_list}``) are filled in, as the
    engine fills them; the others stay as written, so lengths are close, not exact."""
    for rule in ruleset.rules:
        for action in rule.actions:
            if not isinstance(action, Reply) or action.text is None:
                continue
            texts = {"default": action.text.default, **action.text.by_language}
            for language, text in texts.items():
                for name, value in values.items():
                    text = text.replace("{" + name + "}", value)
                yield f"{rule.source}: rule {rule.name!r}: reply.text.{language}", text
