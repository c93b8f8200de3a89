"""Turning the events of one webhook into inbox and quarantine rows, and what both webhook
endpoints (Meta, Twilio) do around storing them.

Every event becomes exactly one row: an inbox row when it has an id and a known business
number, otherwise a quarantine row with its reason. Quarantined events are still stored and
acknowledged, so nothing is lost and Meta does not retry something that can never succeed.

Once a group of rows is committed the writer wakes the workers (:func:`wake_workers`, once
per group, not per webhook); a store that
cannot take them is a 503 (:func:`answer_not_stored`), which the provider retries. The
endpoints await the writer's future themselves: on the hot path a shared coroutine around
it would cost a frame per webhook.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

import orjson

from wacrm.server.responses import Send, send_error
from wacrm.store.inbox import InboxRow, QuarantineRow
from wacrm.store.schema import inbox
from wacrm.whatsapp.meta_webhook import PROVIDER, WebhookEvent
from wacrm.workers.base import Worker

logger = logging.getLogger(__name__)

QUARANTINE_SOURCE = "webhook:meta"
NOT_STORED = "the store is unavailable; the webhook was not stored"

# A value wider than its column is truncated by SQLite but fails the whole group commit on
# PostgreSQL, which would turn one odd event into a retry loop for every webhook in the group.
_KIND_WIDTH: int = getattr(inbox.c.kind.type, "length", None) or 20
_EVENT_ID_WIDTH: int = getattr(inbox.c.event_id.type, "length", None) or 255

AccountLookup = Callable[[str], int | None]


def _quarantine(
    event: WebhookEvent, account_id: int | None, reason: str, now: datetime
) -> QuarantineRow:
    payload = orjson.dumps(
        {
            "kind": event.kind,
            "event_id": event.event_id,
            "phone_number_id": event.phone_number_id,
            "waba_id": event.waba_id,
            "payload": event.payload,
        }
    ).decode()
    return QuarantineRow(account_id, QUARANTINE_SOURCE, reason, payload, now)


def _reason_unusable(event: WebhookEvent) -> str | None:
    if not event.event_id:
        return f"{event.kind} event has no id"
    if len(event.kind) > _KIND_WIDTH:
        return f"event kind {event.kind!r} is longer than the inbox's {_KIND_WIDTH} characters"
    if len(event.event_id) > _EVENT_ID_WIDTH:
        return f"event id is longer than the inbox's {_EVENT_ID_WIDTH} characters"
    return None


def _reason_unrouted(event: WebhookEvent) -> str:
    if event.phone_number_id:
        return f"phone_number_id {event.phone_number_id} is not registered to any account"
    if event.waba_id:
        return (
            f"{event.kind} event has no phone_number_id and its WhatsApp Business Account "
            f"{event.waba_id} is not registered to any account "
            "(set WACRM_WHATSAPP_BUSINESS_ACCOUNT_ID)"
        )
    return f"{event.kind} event has no phone_number_id"


def rows_for_events(
    events: Iterable[WebhookEvent],
    account_for: AccountLookup,
    now: datetime,
    account_for_waba: AccountLookup | None = None,
) -> tuple[list[InboxRow], list[QuarantineRow]]:
    """Split ``events`` into rows to insert and rows to quarantine, in order. An event is
    routed by its ``phone_number_id`` (``account_for``), or, having none (template, quality
    and account updates), by its WABA (``account_for_waba``)."""
    rows: list[InboxRow] = []
    quarantined: list[QuarantineRow] = []
    for event in events:
        pnid = event.phone_number_id
        if pnid:
            account_id = account_for(pnid)
        elif event.waba_id and account_for_waba is not None:
            account_id = account_for_waba(event.waba_id)
        else:
            account_id = None
        if event.problem is not None:
            quarantined.append(_quarantine(event, account_id, event.problem, now))
            continue
        if account_id is None:
            quarantined.append(_quarantine(event, None, _reason_unrouted(event), now))
            continue
        unusable = _reason_unusable(event)
        if unusable is not None:
            quarantined.append(_quarantine(event, account_id, unusable, now))
            continue
        assert event.event_id is not None  # checked by _reason_unusable
        payload = orjson.dumps(event.payload).decode()
        rows.append(InboxRow(account_id, PROVIDER, event.kind, event.event_id, payload, now))
    return rows, quarantined


def describe_failure(exc: BaseException) -> str:
    """A log-safe one-liner: the driver's first line, never SQL parameters (message text)."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).splitlines()
    first = lines[0][:200] if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


async def answer_not_stored(send: Send, what: str, exc: BaseException) -> None:
    """Log why a webhook could not be stored (``what`` failed) and answer 503."""
    logger.error("%s, answered 503: %s", what, describe_failure(exc))
    await send_error(send, 503, NOT_STORED)


def wake_workers(workers: Sequence[Worker]) -> None:
    """New inbox rows are committed: wake each worker. One that cannot be woken finds them
    at its next poll, so a failure here is only logged."""
    for worker in workers:
        try:
            worker.wake()
        except Exception as exc:
            logger.warning("worker %s could not be woken: %s", worker.name, describe_failure(exc))
