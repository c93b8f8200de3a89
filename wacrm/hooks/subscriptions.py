"""REST-hook subscriptions: who wants which rule event, at which URL, signed with which secret.

A subscription starts at the account's newest rule event (``delivered_through``): REST hooks
deliver what happens from now on, never a backlog. Its secret is made here, shown once to
whoever subscribed, and kept for signing, sealed (:class:`~wacrm.store.secrets.SecretBox`:
the column holds a Fernet token, never the secret); listings never show it. A subscription
is removed with its deliveries, or disabled with a reason (a target answering 410 Gone),
which also ends the deliveries still pending for it.

A target must be an ``https`` URL whose host is, and resolves to, public addresses only
(:mod:`~wacrm.hooks.targets`); with ``allow_private`` (the setting
``WACRM_HOOKS_ALLOW_PRIVATE_TARGETS``) any host will do, over ``http`` too.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Connection, Engine, func, select

from wacrm.config import Secret
from wacrm.hooks.targets import SETTING, TargetRefused, check_target
from wacrm.rules.schema import EmitEvent, HandOver, RuleSet
from wacrm.store.schema import hook_deliveries, hook_subscriptions, rule_events
from wacrm.store.secrets import SecretBox

ALL_EVENTS = "*"
# As the rules loader accepts them for emit_event (lower case, like order.shipped).
_EVENT = re.compile(r"^[a-z][a-z0-9_.-]{0,79}$")
MAX_URL_LENGTH = 2048
_HANDOVER_EVENT = "handover"  # what a hand_over action emits (rules/engine.py)


class HookError(ValueError):
    """A subscription cannot be made as asked; the message says why (never with a secret)."""


@dataclass(frozen=True, slots=True)
class Subscription:
    id: int
    account_id: int
    event: str
    target_url: str
    state: str  # active | disabled
    disabled_reason: str | None
    delivered_through: int
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """What listings show: everything but the secret."""
        return {
            "id": self.id,
            "event": self.event,
            "target_url": self.target_url,
            "state": self.state,
            "disabled_reason": self.disabled_reason,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class NewSubscription:
    subscription: Subscription
    secret: Secret  # shown once, to the subscriber; never again


def emitted_events(ruleset: RuleSet) -> frozenset[str]:
    """The event names the loaded rules can emit (enabled or not: a rule may be turned on)."""
    names: set[str] = set()
    for rule in ruleset.rules:
        for action in rule.actions:
            if isinstance(action, EmitEvent):
                names.add(action.name)
            elif isinstance(action, HandOver):
                names.add(_HANDOVER_EVENT)
    return frozenset(names)


def check_event(event: Any, known: Collection[str] | None = None) -> str:
    """``event`` if it is ``*`` or an event name (one of ``known``, when given)."""
    if not isinstance(event, str) or not event:
        raise HookError("event must be a rule event name (like order.status_changed) or '*'")
    if event == ALL_EVENTS:
        return event
    if not _EVENT.match(event):
        raise HookError(
            f"event {event[:80]!r} is not an event name: lower case letters, digits, "
            "'.', '_' and '-', like order.status_changed (or '*' for every event)"
        )
    if known is not None and event not in known:
        offered = ", ".join(sorted(known)) or "none"
        raise HookError(f"no loaded rule emits event {event!r}; rules emit: {offered} (or '*')")
    return event


def check_target_url(url: Any, *, allow_private: bool = False) -> str:
    """``url`` if it is an absolute https URL without credentials in it, whose host is not,
    and does not resolve to, anything but public addresses (DNS is asked: call it off the
    event loop). With ``allow_private``, any host, and http too."""
    if not isinstance(url, str) or not url:
        raise HookError("target_url must be an absolute http or https URL")
    if len(url) > MAX_URL_LENGTH:
        raise HookError(f"target_url is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise HookError("target_url must not contain spaces or control characters")
    parts = urlsplit(url)
    # Checked before anything that echoes the URL: user:password@ is a secret.
    if "@" in parts.netloc:
        raise HookError(
            "target_url must not contain a user name or password; put a token in the path "
            "or verify X-Wacrm-Signature instead"
        )
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"{scheme!r}" if scheme else "none (not an absolute URL)"
        raise HookError(f"target_url must use http or https; its scheme is {shown}")
    if not parts.hostname:
        raise HookError(f"target_url {url[:200]!r} names no host")
    try:
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        raise HookError(f"target_url {url[:200]!r} has an invalid port") from None
    if parts.fragment or url.endswith("#"):
        raise HookError("target_url must not have a #fragment (it is never sent)")
    if allow_private:
        return url
    if scheme != "https":
        # Events carry contact data (phone, name): not in clear text over the Internet.
        raise HookError(
            f"target_url must use https; plain http is only for receivers on your own "
            f"network, with {SETTING} set to true"
        )
    try:
        check_target(url)
    except TargetRefused as exc:
        raise HookError(f"target_url {exc}") from None
    except httpx.InvalidURL as exc:
        raise HookError(f"target_url {url[:200]!r} is not a valid URL ({exc})") from None
    return url


def subscribe(
    engine: Engine,
    account_id: int,
    event: Any,
    target_url: Any,
    now: datetime,
    *,
    box: SecretBox,
    known_events: Collection[str] | None = None,
    allow_private: bool = False,
) -> NewSubscription:
    """Validate and store a subscription starting at the account's newest rule event, its
    secret sealed by ``box``; raises :class:`HookError` with the reason for bad input (and
    :class:`~wacrm.config.ConfigError` when ``box`` has no key). ``allow_private``: see
    :func:`check_target_url`."""
    event = check_event(event, known_events)
    target_url = check_target_url(target_url, allow_private=allow_private)
    secret = secrets.token_hex(32)
    sealed = box.seal(secret)  # before the transaction: it may read or create the key file
    with engine.begin() as conn:
        newest = conn.execute(
            select(func.coalesce(func.max(rule_events.c.id), 0)).where(
                rule_events.c.account_id == account_id
            )
        ).scalar_one()
        result = conn.execute(
            hook_subscriptions.insert().values(
                account_id=account_id,
                event=event,
                target_url=target_url,
                secret=sealed,
                state="active",
                delivered_through=int(newest),
                created_at=now,
                updated_at=now,
            )
        )
        assert result.inserted_primary_key is not None
        sub_id = int(result.inserted_primary_key[0])
    return NewSubscription(
        Subscription(sub_id, account_id, event, target_url, "active", None, int(newest), now),
        Secret(secret),
    )


def _subscription(row: Any) -> Subscription:
    return Subscription(
        int(row.id),
        int(row.account_id),
        row.event,
        row.target_url,
        row.state,
        row.disabled_reason,
        int(row.delivered_through),
        row.created_at,
    )


_COLUMNS = [c for c in hook_subscriptions.c if c.name != "secret"]


def list_subscriptions(engine: Engine, account_id: int) -> list[Subscription]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(*_COLUMNS)
            .where(hook_subscriptions.c.account_id == account_id)
            .order_by(hook_subscriptions.c.id)
        ).all()
    return [_subscription(r) for r in rows]


def get_subscription(engine: Engine, account_id: int, subscription_id: int) -> Subscription | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(*_COLUMNS).where(
                hook_subscriptions.c.id == subscription_id,
                hook_subscriptions.c.account_id == account_id,
            )
        ).first()
    return None if row is None else _subscription(row)


def unsubscribe(engine: Engine, account_id: int, subscription_id: int) -> bool:
    """Remove the subscription and its deliveries; False if the account has no such one."""
    with engine.begin() as conn:
        found = conn.execute(
            select(hook_subscriptions.c.id).where(
                hook_subscriptions.c.id == subscription_id,
                hook_subscriptions.c.account_id == account_id,
            )
        ).first()
        if found is None:
            return False
        conn.execute(
            hook_deliveries.delete().where(hook_deliveries.c.subscription_id == subscription_id)
        )
        conn.execute(hook_subscriptions.delete().where(hook_subscriptions.c.id == subscription_id))
    return True


def disable_in(conn: Connection, subscription_id: int, reason: str, now: datetime) -> bool:
    """In the caller's transaction: disable the subscription with ``reason`` and end its
    pending deliveries (dead, with the reason). False if it was not active."""
    result = conn.execute(
        hook_subscriptions.update()
        .where(hook_subscriptions.c.id == subscription_id, hook_subscriptions.c.state == "active")
        .values(state="disabled", disabled_reason=reason, updated_at=now)
    )
    if not result.rowcount:
        return False
    conn.execute(
        hook_deliveries.update()
        .where(
            hook_deliveries.c.subscription_id == subscription_id,
            hook_deliveries.c.state == "pending",
        )
        .values(state="dead", last_error=f"subscription disabled: {reason}")
    )
    return True


def disable(engine: Engine, subscription_id: int, reason: str, now: datetime) -> bool:
    with engine.begin() as conn:
        return disable_in(conn, subscription_id, reason, now)
