"""The ``wa_outbox`` table's operations: enqueue, claim with a lease, and the writes that
record each outcome. Every function is one short transaction (or runs in the caller's);
the decisions about *which* outcome belong to :mod:`wacrm.workers.whatsapp_outbox`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, exists, func, select

from wacrm.model import DeliveryStatus, advance_status
from wacrm.store.schema import contacts, messages, wa_outbox
from wacrm.workers.whatsapp_policy import flag_contact

_CLAIM_LOCK_KEY = 0x7761_6F75  # "waou": serialises claims across PostgreSQL workers


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
    message_key = conn.execute(
        messages.insert().values(
            account_id=account_id,
            contact_id=contact_id,
            direction="out",
            provider="meta",
            type=kind,
            text=text,
            payload=request,
            status=DeliveryStatus.QUEUED.value,
            status_at=now,
            rule=rule,
            in_reply_to=in_reply_to,
            created_at=now,
        )
    ).inserted_primary_key
    assert message_key is not None
    outbox_key = conn.execute(
        wa_outbox.insert().values(
            account_id=account_id,
            message_id=int(message_key[0]),
            phone_number_id=phone_number_id,
            recipient=str(body["to"]),
            request=request,
            fallback_request=orjson.dumps(fallback).decode() if fallback else None,
            state="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    ).inserted_primary_key
    assert outbox_key is not None
    return int(message_key[0]), int(outbox_key[0])


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed outbox row with what sending it needs."""

    id: int
    account_id: int
    message_id: int
    phone_number_id: str
    recipient: str
    request: str
    fallback: str | None
    attempts: int
    created_at: datetime
    contact_id: int | None

    @property
    def pair(self) -> tuple[str, str]:
        return (self.phone_number_id, self.recipient)


def claim(
    engine: Engine, now: datetime, *, limit: int, lease: timedelta, skip_numbers: list[str]
) -> list[Job]:
    """Lease up to ``limit`` due rows, oldest first, moving them to ``sending``.

    A row is not due while an earlier row to the same recipient waits (order is kept), and
    a ``sending`` row whose lease ran out is due again (its worker died).
    """
    o = wa_outbox
    earlier = wa_outbox.alias("earlier")
    waiting_before = exists().where(
        earlier.c.phone_number_id == o.c.phone_number_id,
        earlier.c.recipient == o.c.recipient,
        earlier.c.id < o.c.id,
        earlier.c.state.in_(("pending", "sending")),
        earlier.c.next_attempt_at > now,
    )
    query = (
        select(
            o.c.id,
            o.c.account_id,
            o.c.message_id,
            o.c.phone_number_id,
            o.c.recipient,
            o.c.request,
            o.c.fallback_request,
            o.c.attempts,
            o.c.created_at,
            messages.c.contact_id,
        )
        .join(messages, messages.c.id == o.c.message_id)
        .where(o.c.state.in_(("pending", "sending")), o.c.next_attempt_at <= now)
        .where(~waiting_before)
        .order_by(o.c.id)
        .limit(limit)
    )
    if skip_numbers:
        query = query.where(o.c.phone_number_id.not_in(skip_numbers))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Without this, two workers could each see the other's not-yet-committed claim
            # as still pending and send one recipient's messages out of order.
            conn.execute(select(func.pg_advisory_xact_lock(_CLAIM_LOCK_KEY)))
            query = query.with_for_update(of=o, skip_locked=True)
        rows = conn.execute(query).all()
        if rows:
            conn.execute(
                o.update()
                .where(o.c.id.in_([r.id for r in rows]))
                .values(state="sending", next_attempt_at=now + lease)
            )
    return [
        Job(
            id=int(r.id),
            account_id=int(r.account_id),
            message_id=int(r.message_id),
            phone_number_id=str(r.phone_number_id),
            recipient=str(r.recipient),
            request=str(r.request),
            fallback=r.fallback_request,
            attempts=int(r.attempts),
            created_at=r.created_at,
            contact_id=int(r.contact_id) if r.contact_id is not None else None,
        )
        for r in rows
    ]


def release(engine: Engine, job: Job, at: datetime) -> None:
    """Give the row back unattempted (pacing, halts, order)."""
    with engine.begin() as conn:
        conn.execute(
            wa_outbox.update()
            .where(wa_outbox.c.id == job.id, wa_outbox.c.state == "sending")
            .values(state="pending", next_attempt_at=at)
        )


def reschedule(engine: Engine, job: Job, *, attempts: int, at: datetime, error: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            wa_outbox.update()
            .where(wa_outbox.c.id == job.id)
            .values(state="pending", attempts=attempts, next_attempt_at=at, last_error=error)
        )


def mark_sent(engine: Engine, job: Job, provider_message_id: str, now: datetime) -> None:
    """Meta accepted it: record the wamid (status stays ``queued`` for the webhooks)."""
    with engine.begin() as conn:
        conn.execute(
            messages.update()
            .where(messages.c.id == job.message_id)
            .values(provider_message_id=provider_message_id, sent_at=now)
        )
        conn.execute(
            wa_outbox.update()
            .where(wa_outbox.c.id == job.id)
            .values(state="sent", attempts=job.attempts + 1, last_error=None)
        )
        if job.contact_id is not None:
            conn.execute(
                contacts.update()
                .where(contacts.c.id == job.contact_id)
                .values(last_outbound_at=now)
            )


def mark_failed(
    engine: Engine,
    job: Job,
    *,
    code: int | None,
    error: str,
    title: str,
    now: datetime,
    flag: bool = False,
) -> None:
    """Failed for good: the message is ``failed`` with the code; the contact maybe flagged."""
    with engine.begin() as conn:
        current = conn.execute(
            select(messages.c.status).where(messages.c.id == job.message_id)
        ).scalar()
        status = advance_status(
            DeliveryStatus.parse(current) if current else None, DeliveryStatus.FAILED
        )
        conn.execute(
            messages.update()
            .where(messages.c.id == job.message_id)
            .values(
                status=status.value,
                status_at=now,
                error_code=str(code) if code is not None else "local",
                error_title=title,
            )
        )
        conn.execute(
            wa_outbox.update()
            .where(wa_outbox.c.id == job.id)
            .values(state="failed", attempts=job.attempts + 1, last_error=error)
        )
        if flag and job.contact_id is not None:
            flag_contact(conn, job.contact_id, code, now)


def use_fallback(engine: Engine, job: Job) -> None:
    """Replace the free-form request by its template fallback, on the message too."""
    assert job.fallback is not None
    template = orjson.loads(job.fallback).get("template") or {}
    label = f"[template {template.get('name')}/{(template.get('language') or {}).get('code')}]"
    with engine.begin() as conn:
        conn.execute(
            wa_outbox.update()
            .where(wa_outbox.c.id == job.id)
            .values(request=job.fallback, fallback_request=None)
        )
        conn.execute(
            messages.update()
            .where(messages.c.id == job.message_id)
            .values(type="template", text=label, payload=job.fallback)
        )


def last_inbound_at(engine: Engine, job: Job) -> datetime | None:
    """When the recipient last wrote to us: by the message's contact, else by phone."""
    query = select(contacts.c.last_inbound_at)
    if job.contact_id is not None:
        query = query.where(contacts.c.id == job.contact_id)
    else:
        query = query.where(
            contacts.c.account_id == job.account_id, contacts.c.phone == job.recipient
        )
    with engine.connect() as conn:
        found: datetime | None = conn.execute(query).scalar()
    return found
