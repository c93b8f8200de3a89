"""Queueing a WhatsApp send: the ``messages`` row and its ``wa_outbox`` row, together.

Store code, in the caller's transaction, so a reply is durable exactly when the inbound
message (or rule firing, or CLI call) that caused it is. Everything that sends goes through
here: the outbox worker (:mod:`wacrm.workers.whatsapp_outbox`) then gives each row what every
send gets (pacing, the 24 h window and its template fallback, retries by error code).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, func, literal, select

from wacrm.model import DeliveryStatus
from wacrm.store.schema import messages, wa_outbox, whatsapp_numbers

# The sending number's provider, read inside the insert (no round trip of its own): what
# ``wacrm export messages`` shows while the row is queued, paced or halted. A number not
# registered is sent through Meta, as the outbox's claim decides it.
_NUMBER_PROVIDER = func.coalesce(
    select(whatsapp_numbers.c.provider)
    .where(whatsapp_numbers.c.phone_number_id == bindparam("number_id"))
    .scalar_subquery(),
    literal("meta"),
)
_INSERT_MESSAGE = messages.insert().values(provider=_NUMBER_PROVIDER)
_INSERT_OUTBOX = wa_outbox.insert()


def enqueue_send(
    conn: Connection,
    *,
    account_id: int,
    phone_number_id: str,
    body: dict[str, Any],
    contact_id: int | None = None,
    text: str | None = None,
    rule: str | None = None,
    in_reply_to: int | None = None,
    fallback: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> tuple[int, int]:
    """Store an outbound message and its outbox row in the caller's transaction.

    ``body`` is a Cloud API body (see :mod:`wacrm.whatsapp.meta_bodies`); ``fallback`` a
    template body used if the 24 h window is closed. Returns ``(message id, outbox id)``.
    """
    now = now or datetime.now(UTC)
    request = orjson.dumps(body).decode()
    kind = str(body.get("type") or "text")
    if text is None and kind == "text":
        text = str(body.get("text", {}).get("body", ""))
    # Plain inserts with the values as parameters: a statement built with .values() per
    # call cost more to build and key than to run, on every reply.
    message_key = conn.execute(
        _INSERT_MESSAGE,
        {
            "account_id": account_id,
            "contact_id": contact_id,
            "direction": "out",
            "number_id": phone_number_id,
            "type": kind,
            "text": text,
            "payload": request,
            "status": DeliveryStatus.QUEUED.value,
            "status_at": now,
            "rule": rule,
            "in_reply_to": in_reply_to,
            "created_at": now,
        },
    ).inserted_primary_key
    assert message_key is not None
    outbox_key = conn.execute(
        _INSERT_OUTBOX,
        {
            "account_id": account_id,
            "message_id": int(message_key[0]),
            "phone_number_id": phone_number_id,
            "recipient": str(body["to"]),
            "request": request,
            "fallback_request": orjson.dumps(fallback).decode() if fallback else None,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        },
    ).inserted_primary_key
    assert outbox_key is not None
    return int(message_key[0]), int(outbox_key[0])
