"""Delivering rule events to REST-hook subscribers: the signed POST and what each answer means.

What a subscriber receives
--------------------------
``POST <target_url>`` with ``Content-Type: application/json`` and the body::

    {"id": 42, "event": "handover", "rule": "human-handover",
     "account": {"id": 1, "name": "default"},
     "contact": {"id": 7, "phone": "+16315551234", "wa_id": "16315551234", "name": "Alice",
                 "tags": ["handover"], "priority": "high", "language": "en", "crm_id": null},
     "data": {...what the rule put in the event...},
     "created_at": "2026-11-25T09:00:00+00:00"}

(``contact`` is the contact as it is when the event is sent, or null.) Headers:

- ``X-Wacrm-Event-Id``: the event's id (the body's ``id``);
- ``X-Wacrm-Timestamp``: when this attempt was signed, Unix seconds;
- ``X-Wacrm-Signature``: ``sha256=`` + hex HMAC-SHA256, keyed with the subscription's secret
  (shown once, when subscribing), of ``timestamp + "." + body``.

Verifying, as a receiver (Python; the same in any language)::

    import hashlib, hmac, time

    def verify(secret: str, headers, raw_body: bytes, tolerance: int = 300) -> bool:
        timestamp = headers["X-Wacrm-Timestamp"]
        expected = "sha256=" + hmac.new(
            secret.encode(), timestamp.encode() + b"." + raw_body, hashlib.sha256
        ).hexdigest()
        fresh = abs(time.time() - int(timestamp)) <= tolerance  # refuses replays
        return fresh and hmac.compare_digest(expected, headers["X-Wacrm-Signature"])

Use the raw bytes as received, before any JSON parsing. Delivery is *at least once*: a retry,
or a crash between the POST and recording its answer, sends the same event again (with a new
timestamp and signature), so de-duplicate by ``X-Wacrm-Event-Id``.

What the answer means
---------------------
- 2xx: delivered.
- 410 Gone: the target unsubscribes (the Zapier REST-hook convention): the subscription is
  disabled and its pending deliveries are dead.
- 429, 408, 5xx, a timeout or a connection error: tried again, ``Retry-After`` (seconds or an
  HTTP date) first, else exponential backoff with full jitter; at most :data:`HOOK_POLICY`'s
  10 attempts within 24 hours, then dead with the last status and error.
- Anything else (other 4xx, a 3xx: redirects are not followed): dead at once.

Only public addresses are sent to (unless ``WACRM_HOOKS_ALLOW_PRIVATE_TARGETS`` is true): the
worker's client resolves the host at every delivery, refuses if any address is not public,
and connects to the address it checked (:mod:`wacrm.hooks.targets`). A refusal is recorded
as the attempt's error (``refused: host '…' resolves to a private address; …``) and nothing
is sent. A name is tried again like a connection error (DNS answers change, and the admin
may turn the setting on for a receiver that moved onto the LAN); after the bounds it is dead
and ``wacrm hooks retry`` can queue it again. A host that *is* such an address (or
localhost; stored before the check existed) cannot change: dead at once. Either way the
subscription stays active: refusing costs the target nothing, and disabling would make a
legitimate subscriber whose DNS briefly misbehaved subscribe again.

The secret is stored sealed and opened when its deliveries are leased. One that no configured
key opens (``WACRM_SECRET_KEY`` changed without its old key) cannot sign: that delivery is dead
and the subscription disabled, both with the reason :data:`SECRET_UNOPENABLE`; subscribe again.

The POST happens outside any store transaction (on SQLite one would hold the webhook inbox
up). Before it, the delivery is leased: its attempt is counted and ``next_attempt_at`` moved a
lease ahead, so a crash mid-POST sends it again once the lease ends, and never in parallel.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import httpx
import orjson
from sqlalchemy import Connection, Engine, and_, func, select

from wacrm.config import Secret
from wacrm.hooks.subscriptions import disable_in
from wacrm.hooks.targets import TargetRefused
from wacrm.store.schema import accounts, contacts, hook_deliveries, hook_subscriptions, rule_events
from wacrm.store.secrets import SecretBox, SecretError
from wacrm.sync.retry import RetryPolicy, parse_retry_after

logger = logging.getLogger(__name__)

EVENT_ID_HEADER = "X-Wacrm-Event-Id"
TIMESTAMP_HEADER = "X-Wacrm-Timestamp"
SIGNATURE_HEADER = "X-Wacrm-Signature"
# Per delivery, across passes: 10 attempts, at most 24 h after it was queued.
HOOK_POLICY = RetryPolicy(
    max_attempts=10, max_elapsed=24 * 3600.0, base=30.0, cap=6 * 3600.0, max_retry_after=24 * 3600.0
)
DELIVERY_STATES = ("pending", "delivered", "dead")
_ERROR_SNIPPET = 200  # characters of a failing answer's body kept in last_error
SECRET_UNOPENABLE = "secret cannot be opened (key changed?)"

Kind = Literal["delivered", "retry", "dead", "gone"]


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Wacrm-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str, timestamp: str, body: bytes, signature: str, *, now: float, tolerance: int = 300
) -> bool:
    """The receiver's check (see the module docstring), for receivers written in Python."""
    try:
        fresh = abs(now - int(timestamp)) <= tolerance
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


@dataclass(frozen=True, slots=True)
class Job:
    """A leased delivery with everything its POST needs, read before the POST."""

    delivery_id: int
    subscription_id: int
    event_id: int
    attempts: int  # counting this one
    queued_at: datetime
    target_url: str
    secret: Secret
    body: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    refused: bool = False  # not sent: the target is not public (wacrm.hooks.targets)


# -- claiming ------------------------------------------------------------------------------


def due_subscriptions(
    engine: Engine, now: datetime, *, exclude: Collection[int] = (), limit: int = 100
) -> list[int]:
    """Active subscriptions with deliveries due at ``now``, longest waiting first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(hook_deliveries.c.subscription_id)
            .join(hook_subscriptions, hook_subscriptions.c.id == hook_deliveries.c.subscription_id)
            .where(
                hook_deliveries.c.state == "pending",
                hook_deliveries.c.next_attempt_at <= now,
                hook_subscriptions.c.state == "active",
                hook_deliveries.c.subscription_id.not_in(list(exclude)),
            )
            .group_by(hook_deliveries.c.subscription_id)
            .order_by(func.min(hook_deliveries.c.next_attempt_at))
            .limit(limit)
        ).all()
    return [int(r.subscription_id) for r in rows]


def claim(
    engine: Engine,
    subscription_id: int,
    now: datetime,
    *,
    box: SecretBox,
    lease: timedelta,
    limit: int,
) -> list[Job]:
    """Lease up to ``limit`` due deliveries of one subscription, oldest first, with its
    secret opened by ``box``. If it does not open, they are dead and the subscription
    disabled (:data:`SECRET_UNOPENABLE`), and nothing is leased. A :class:`ConfigError`
    (``box`` has no key) leaves everything as it was."""
    with engine.begin() as conn:
        rows = conn.execute(
            select(
                hook_deliveries.c.id,
                hook_deliveries.c.attempts,
                hook_deliveries.c.created_at.label("queued_at"),
                hook_subscriptions.c.target_url,
                hook_subscriptions.c.secret,
                rule_events.c.id.label("event_id"),
                rule_events.c.name,
                rule_events.c.rule,
                rule_events.c.payload,
                rule_events.c.created_at,
                accounts.c.id.label("account_id"),
                accounts.c.name.label("account_name"),
                contacts.c.id.label("contact_id"),
                contacts.c.phone,
                contacts.c.wa_id,
                contacts.c.name.label("contact_name"),
                contacts.c.tags,
                contacts.c.priority,
                contacts.c.language,
                contacts.c.crm_id,
            )
            .select_from(
                hook_deliveries.join(
                    hook_subscriptions, hook_subscriptions.c.id == hook_deliveries.c.subscription_id
                )
                .join(rule_events, rule_events.c.id == hook_deliveries.c.event_id)
                .join(accounts, accounts.c.id == hook_deliveries.c.account_id)
                .outerjoin(
                    contacts,
                    and_(
                        contacts.c.id == rule_events.c.contact_id,
                        contacts.c.account_id == rule_events.c.account_id,
                    ),
                )
            )
            .where(
                hook_deliveries.c.subscription_id == subscription_id,
                hook_deliveries.c.state == "pending",
                hook_deliveries.c.next_attempt_at <= now,
                hook_subscriptions.c.state == "active",
            )
            .order_by(hook_deliveries.c.next_attempt_at, hook_deliveries.c.id)
            .limit(limit)
        ).all()
        if not rows:
            return []
        try:  # one subscription: one secret
            secret = Secret(box.open(rows[0].secret))
        except SecretError:
            _unopenable(conn, subscription_id, [int(r.id) for r in rows], now)
            return []
        jobs = []
        for row in rows:
            leased = conn.execute(
                hook_deliveries.update()
                .where(
                    hook_deliveries.c.id == row.id,
                    hook_deliveries.c.state == "pending",
                    hook_deliveries.c.attempts == row.attempts,
                    hook_deliveries.c.next_attempt_at <= now,
                )
                .values(attempts=row.attempts + 1, next_attempt_at=now + lease)
            )
            if leased.rowcount != 1:
                continue  # another worker leased it first
            jobs.append(
                Job(
                    delivery_id=int(row.id),
                    subscription_id=subscription_id,
                    event_id=int(row.event_id),
                    attempts=int(row.attempts) + 1,
                    queued_at=row.queued_at,
                    target_url=row.target_url,
                    secret=secret,
                    body=event_body(row),
                )
            )
    return jobs


def _unopenable(conn: Connection, subscription_id: int, due: list[int], now: datetime) -> None:
    conn.execute(
        hook_deliveries.update()
        .where(hook_deliveries.c.id.in_(due), hook_deliveries.c.state == "pending")
        .values(state="dead", last_error=SECRET_UNOPENABLE)
    )
    if disable_in(conn, subscription_id, SECRET_UNOPENABLE, now):
        # Ids only: never the token, never the target URL.
        logger.error("hook subscription %s disabled: %s", subscription_id, SECRET_UNOPENABLE)


def event_body(row: Any) -> bytes:
    """The JSON a subscriber receives for one event (see the module docstring)."""
    try:
        stored = orjson.loads(row.payload)
    except orjson.JSONDecodeError:
        stored = None
    data = stored.get("data") if isinstance(stored, dict) else None
    contact = None
    if row.contact_id is not None:
        try:
            tags = orjson.loads(row.tags or "[]")
        except orjson.JSONDecodeError:
            tags = []
        contact = {
            "id": int(row.contact_id),
            "phone": row.phone,
            "wa_id": row.wa_id,
            "name": row.contact_name,
            "tags": tags if isinstance(tags, list) else [],
            "priority": row.priority,
            "language": row.language,
            "crm_id": row.crm_id,
        }
    doc = {
        "id": int(row.event_id),
        "event": row.name,
        "rule": row.rule,
        "account": {"id": int(row.account_id), "name": row.account_name},
        "contact": contact,
        "data": data if isinstance(data, dict) else {},
        "created_at": row.created_at.isoformat(),
    }
    return orjson.dumps(doc)


# -- the POST ------------------------------------------------------------------------------


def post(client: httpx.Client, job: Job, now: datetime) -> Outcome:
    """Send ``job`` signed at ``now``; never raises for what the target does."""
    timestamp = str(int(now.timestamp()))
    headers = {
        "Content-Type": "application/json",
        EVENT_ID_HEADER: str(job.event_id),
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(job.secret.reveal(), timestamp, job.body),
    }
    try:
        with client.stream("POST", job.target_url, content=job.body, headers=headers) as response:
            snippet = b""
            if not 200 <= response.status_code < 300:
                for chunk in response.iter_bytes():
                    snippet += chunk
                    if len(snippet) >= _ERROR_SNIPPET:
                        break
            return classify(response.status_code, response.headers, snippet, now)
    except TargetRefused as exc:  # nothing was sent (see the module docstring)
        kind: Kind = "dead" if exc.permanent else "retry"
        return Outcome(kind, error=f"refused: {exc}", refused=True)
    except httpx.TimeoutException as exc:
        # Names only the kind of failure: the URL (a capability, often) stays out of errors.
        return Outcome("retry", error=f"timed out ({type(exc).__name__})")
    except httpx.TransportError as exc:
        return Outcome("retry", error=f"connection failed ({type(exc).__name__})")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return Outcome("dead", error=f"request failed ({type(exc).__name__})")


def classify(status: int, headers: httpx.Headers, body: bytes, now: datetime) -> Outcome:
    """What the target's answer means for the delivery (table in the module docstring)."""
    if 200 <= status < 300:
        return Outcome("delivered", status)
    text = body[:_ERROR_SNIPPET].decode("utf-8", "replace")
    text = " ".join(text.split())
    error = f"HTTP {status}" + (f": {text}" if text else "")
    if status == 410:
        return Outcome("gone", status, error)
    if status in (408, 429) or status >= 500:
        return Outcome("retry", status, error, parse_retry_after(headers.get("retry-after"), now))
    if 300 <= status < 400:
        error = f"HTTP {status}: redirects are not followed; subscribe the final URL"
    return Outcome("dead", status, error)


# -- recording the answer ------------------------------------------------------------------


def record(
    engine: Engine,
    job: Job,
    outcome: Outcome,
    now: datetime,
    *,
    policy: RetryPolicy = HOOK_POLICY,
    rng: random.Random,
) -> str:
    """Store what the POST came to; returns the delivery's state. A stale job (its lease
    ended and another worker took it over, or its subscription was removed) changes nothing."""
    lease_held = and_(
        hook_deliveries.c.id == job.delivery_id,
        hook_deliveries.c.state == "pending",
        hook_deliveries.c.attempts == job.attempts,
    )
    values: dict[str, Any] = {"last_status": outcome.status, "last_error": outcome.error}
    state = "pending"
    if outcome.kind == "delivered":
        state = "delivered"
        values.update(last_error=None, delivered_at=now)
    elif outcome.kind in ("dead", "gone"):
        state = "dead"
    else:
        delay = policy.delay(job.attempts, outcome.retry_after, rng)
        elapsed = (now - job.queued_at).total_seconds()
        if policy.should_retry(job.attempts, elapsed, delay):
            values["next_attempt_at"] = now + timedelta(seconds=delay)
        else:
            state = "dead"
            values["last_error"] = (
                f"gave up after {job.attempts} attempt(s) in {_duration(elapsed)}: {outcome.error}"
            )
    with engine.begin() as conn:
        done = conn.execute(
            hook_deliveries.update().where(lease_held).values(state=state, **values)
        )
        if done.rowcount != 1:
            return "stale"
        if outcome.kind == "gone":
            disable_in(conn, job.subscription_id, "the target answered 410 Gone", now)
    return state


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -- looking and re-queueing ---------------------------------------------------------------


def list_deliveries(
    engine: Engine,
    account_id: int,
    *,
    subscription_id: int | None = None,
    state: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The account's most recent deliveries, newest first."""
    query = (
        select(
            hook_deliveries.c.id,
            hook_deliveries.c.subscription_id,
            hook_deliveries.c.event_id,
            rule_events.c.name.label("event"),
            hook_deliveries.c.state,
            hook_deliveries.c.attempts,
            hook_deliveries.c.last_status,
            hook_deliveries.c.last_error,
            hook_deliveries.c.next_attempt_at,
            hook_deliveries.c.created_at,
            hook_deliveries.c.delivered_at,
        )
        .join(rule_events, rule_events.c.id == hook_deliveries.c.event_id)
        .where(hook_deliveries.c.account_id == account_id)
        .order_by(hook_deliveries.c.id.desc())
        .limit(limit)
    )
    if subscription_id is not None:
        query = query.where(hook_deliveries.c.subscription_id == subscription_id)
    if state is not None:
        query = query.where(hook_deliveries.c.state == state)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        {
            "id": int(r.id),
            "subscription_id": int(r.subscription_id),
            "event_id": int(r.event_id),
            "event": r.event,
            "state": r.state,
            "attempts": int(r.attempts),
            "last_status": r.last_status,
            "last_error": r.last_error,
            "next_attempt_at": r.next_attempt_at.isoformat() if r.state == "pending" else None,
            "created_at": r.created_at.isoformat(),
            "delivered_at": r.delivered_at.isoformat() if r.delivered_at else None,
        }
        for r in rows
    ]


def requeue_dead(
    engine: Engine, account_id: int, now: datetime, *, delivery_id: int | None = None
) -> int:
    """Put dead deliveries (all, or one) of active subscriptions back in line, with fresh
    bounds (attempts 0, queued now); returns how many."""
    active = select(hook_subscriptions.c.id).where(
        hook_subscriptions.c.account_id == account_id, hook_subscriptions.c.state == "active"
    )
    query = hook_deliveries.update().where(
        hook_deliveries.c.account_id == account_id,
        hook_deliveries.c.state == "dead",
        hook_deliveries.c.subscription_id.in_(active.scalar_subquery()),
    )
    if delivery_id is not None:
        query = query.where(hook_deliveries.c.id == delivery_id)
    with engine.begin() as conn:
        result = conn.execute(
            query.values(state="pending", attempts=0, next_attempt_at=now, created_at=now)
        )
    return int(result.rowcount or 0)
