"""The template fallback for a free-form send refused *after* it was accepted.

The outbox worker switches a free-form send to its template fallback when the provider
refuses it at once because the user's 24 h window is closed (or when it refuses it itself).
Both providers may instead accept the send and report the refusal later, as a failed
status: Meta answers 200 with a wamid and then posts ``failed`` with code 131047, Twilio
calls back ``failed``/``undelivered`` with ``ErrorCode`` 63016. The inbox processor calls
:func:`queue_late_fallback` in the transaction that records that failure.

The failed message stays failed, its history intact; the fallback is queued as a message of
its own (same account, number, contact and rule) and the old row's ``fallback_request`` is
cleared by a conditional update, so a duplicate or re-ordered failed status finds nothing
left to queue. Everything is in the caller's transaction: a crash queues nothing, and the
status is applied again, fallback included, when its inbox row is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

import orjson
from sqlalchemy import Connection, select

from wacrm.store.schema import messages, wa_outbox
from wacrm.store.whatsapp_outbox import enqueue_send
from wacrm.whatsapp.errors import ErrorRule, SendAction, classify
from wacrm.whatsapp.meta_bodies import template_label
from wacrm.whatsapp.twilio_errors import classify_twilio

log = logging.getLogger(__name__)

# A status carries the provider's code but no HTTP status: Twilio's table decides alone
# (an unknown code is then judged as "no answer", a retry, which is never a switch).
_CLASSIFIERS: Mapping[str, Callable[[int], ErrorRule]] = MappingProxyType(
    {"meta": classify, "twilio": lambda code: classify_twilio(code, None)}
)


def switches_to_template(provider: str, code: object) -> bool:
    """Whether a failure with ``code`` from ``provider`` means "only a template can go now"
    (the error tables' :attr:`SendAction.SWITCH_TO_TEMPLATE`)."""
    classifier = _CLASSIFIERS.get(provider)
    number = _int_code(code)
    if classifier is None or number is None:
        return False
    return classifier(number).action is SendAction.SWITCH_TO_TEMPLATE


def queue_late_fallback(
    conn: Connection,
    *,
    account_id: int,
    message_id: int,
    provider: str,
    code: object,
    now: datetime,
) -> int | None:
    """Queue the template fallback of outbound message ``message_id``, which a status from
    ``provider`` has just failed with ``code``; returns the new message's id, or ``None``
    when the code is not a window refusal or the message has no fallback (left, or left any
    more: it was queued already)."""
    if not switches_to_template(provider, code):
        return None
    row = conn.execute(
        select(
            wa_outbox.c.id,
            wa_outbox.c.phone_number_id,
            wa_outbox.c.recipient,
            wa_outbox.c.fallback_request,
        ).where(
            wa_outbox.c.message_id == message_id,
            wa_outbox.c.account_id == account_id,
            wa_outbox.c.state == "sent",  # pending or sending: the worker's own to switch
            wa_outbox.c.fallback_request.is_not(None),
        )
    ).first()
    if row is None:
        return None
    body = _template_body(row.fallback_request, row.recipient)
    if body is None:
        log.warning("outbox %s: stored template fallback is not usable; not sent", row.id)
        return None
    # Test-and-clear: only the status that clears the fallback queues it.
    cleared = conn.execute(
        wa_outbox.update()
        .where(wa_outbox.c.id == row.id, wa_outbox.c.fallback_request.is_not(None))
        .values(fallback_request=None)
    )
    if cleared.rowcount != 1:
        return None
    original = conn.execute(
        select(messages.c.contact_id, messages.c.rule, messages.c.in_reply_to).where(
            messages.c.id == message_id
        )
    ).one()
    new_id, _ = enqueue_send(
        conn,
        account_id=account_id,
        phone_number_id=row.phone_number_id,
        body=body,
        contact_id=original.contact_id,
        text=template_label(body),
        rule=original.rule,
        in_reply_to=original.in_reply_to,
        now=now,
    )
    log.info(
        "message %s refused after acceptance (%s %s: 24 h window closed); "
        "template fallback queued as message %s",
        message_id,
        provider,
        code,
        new_id,
    )
    return new_id


def _template_body(raw: str, recipient: str) -> dict[str, Any] | None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("template"), dict):
        return None
    body.setdefault("to", recipient)
    return body


def _int_code(code: object) -> int | None:
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.strip().isdigit():
        return int(code)
    return None
