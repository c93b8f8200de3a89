"""The ``wa_outbox`` table's operations: claim with a lease, and the writes that record each
outcome (``x_in(conn, ...)``, in the caller's transaction; :class:`Outcomes` commits a pass's
writes together). The decisions about *which* outcome belong to
:mod:`wacrm.workers.whatsapp_outbox`. Rows are queued by
:func:`wacrm.store.whatsapp_outbox.enqueue_send`."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    Select,
    and_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
)

from wacrm.model import DeliveryStatus, advance_status
from wacrm.store.schema import contacts, messages, sending_numbers, wa_outbox, whatsapp_numbers
from wacrm.store.sending_numbers import take_leases
from wacrm.whatsapp.meta_bodies import template_label
from wacrm.workers.whatsapp_policy import flag_contact

log = logging.getLogger(__name__)

_CLAIM_LOCK_KEY = 0x7761_6F75  # "waou": serialises claims across PostgreSQL workers

# Told, inside the transaction that records it, that a message failed for good:
# (conn, job, error code or None, error title, now). The rules' "message failed" hook.
FailureHook = Callable[[Connection, "Job", str | None, str, datetime], None]

DEFAULT_PROVIDER = "meta"  # a number not in whatsapp_numbers is a Cloud API number


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
    # When the recipient last wrote (the 24 h window), read with the claim; None: never,
    # or the message has no contact (then :func:`last_inbound_at` looks it up by phone).
    last_inbound_at: datetime | None = None
    # Another sender may claim the row after this (its lease ran out): don't send it then.
    leased_until: datetime | None = None
    # Who sends it: the provider of ``phone_number_id`` in ``whatsapp_numbers`` (meta|twilio).
    provider: str = DEFAULT_PROVIDER

    @property
    def pair(self) -> tuple[str, str]:
        return (self.phone_number_id, self.recipient)


@functools.cache
def _claim_query(postgres: bool, skipping: bool, skipping_providers: bool) -> Select[Any]:
    """The claim's SELECT, built once per variant: it runs for every batch the processor
    hands over, and building and keying a statement this size cost more than running it."""
    o = wa_outbox
    earlier = wa_outbox.alias("earlier")
    now = bindparam("now", type_=o.c.next_attempt_at.type)
    provider = func.coalesce(whatsapp_numbers.c.provider, literal(DEFAULT_PROVIDER))
    # A number is ours to send from when nobody holds it, we do, or the holder's lease ran
    # out; never while it is halted (see wacrm.store.sending_numbers).
    held = sending_numbers
    ours = or_(
        held.c.phone_number_id.is_(None),
        and_(
            held.c.halted_reason.is_(None),
            or_(
                held.c.sender.is_(None),
                held.c.sender == bindparam("sender", type_=held.c.sender.type),
                held.c.lease_until <= now,
            ),
        ),
    )
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
            contacts.c.last_inbound_at,
            provider.label("provider"),
        )
        .join(messages, messages.c.id == o.c.message_id)
        # Read here, in the claim, rather than in a transaction of its own per send.
        .outerjoin(contacts, contacts.c.id == messages.c.contact_id)
        .outerjoin(whatsapp_numbers, whatsapp_numbers.c.phone_number_id == o.c.phone_number_id)
        .outerjoin(held, held.c.phone_number_id == o.c.phone_number_id)
        .where(o.c.state.in_(("pending", "sending")), o.c.next_attempt_at <= now)
        .where(ours)
        .where(~waiting_before)
        .order_by(o.c.id)
        .limit(bindparam("limit", type_=Integer()))
    )
    if skipping:
        query = query.where(o.c.phone_number_id.not_in(bindparam("skip", expanding=True)))
    if skipping_providers:
        query = query.where(provider.not_in(bindparam("skip_providers", expanding=True)))
    if postgres:
        query = query.with_for_update(of=o, skip_locked=True)
    return query


_LEASE = (
    wa_outbox.update()
    .where(wa_outbox.c.id.in_(bindparam("ids", expanding=True)))
    .values(state="sending", next_attempt_at=bindparam("until"))
)


def claim(
    engine: Engine,
    now: datetime,
    *,
    limit: int,
    lease: timedelta,
    skip_numbers: list[str],
    skip_providers: Sequence[str] = (),
    sender: NumberLeases | None = None,
) -> list[Job]:
    """Lease up to ``limit`` due rows, oldest first, moving them to ``sending``, in a
    transaction of its own; see :func:`claim_in`."""
    with engine.begin() as conn:
        return claim_in(
            conn,
            now,
            limit=limit,
            lease=lease,
            skip_numbers=skip_numbers,
            skip_providers=skip_providers,
            sender=sender,
        )


class NumberLeases:
    """One sender's hold on the numbers it sends from (``sending_numbers``): its name, how
    long a lease lasts, and until when it holds each number, so a claim renews a lease only
    once half of it has passed rather than writing it every time."""

    def __init__(self, name: str, duration: timedelta) -> None:
        self.name = name
        self.duration = duration
        self._until: dict[str, datetime] = {}

    def renew_in(self, conn: Connection, numbers: Iterable[str], now: datetime) -> None:
        """Take or renew, in the claim's transaction, the leases of ``numbers`` (whose rows
        it just claimed) that are not held for at least half a lease more."""
        soon = now + self.duration / 2
        due = sorted({n for n in numbers if self._until.get(n, now) < soon})
        if due:
            until = now + self.duration
            take_leases(conn, due, self.name, until, now)
            for number in due:
                self._until[number] = until

    def forget(self) -> None:
        """The leases were released (or may have been lost): take them anew next time."""
        self._until.clear()


def claim_in(
    conn: Connection,
    now: datetime,
    *,
    limit: int,
    lease: timedelta,
    skip_numbers: list[str],
    skip_providers: Sequence[str] = (),
    sender: NumberLeases | None = None,
) -> list[Job]:
    """Lease up to ``limit`` due rows, oldest first, moving them to ``sending``, in the
    caller's transaction: the jobs are the caller's to send once it has committed.

    A row is not due while an earlier row to the same recipient waits (order is kept), and
    a ``sending`` row whose lease ran out is due again (its worker died). Rows of numbers
    in ``skip_numbers``, or whose provider is in ``skip_providers``, are left alone, and so
    are rows of halted numbers and of numbers another sender holds (``sending_numbers``);
    ``sender`` takes or renews the lease of the numbers it claims rows of.
    """
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        # Without this, two workers could each see the other's not-yet-committed claim
        # as still pending and send one recipient's messages out of order.
        conn.execute(select(func.pg_advisory_xact_lock(_CLAIM_LOCK_KEY)))
    params: dict[str, Any] = {
        "now": now,
        "limit": limit,
        "sender": sender.name if sender is not None else None,
    }
    if skip_numbers:
        params["skip"] = skip_numbers
    if skip_providers:
        params["skip_providers"] = list(skip_providers)
    query = _claim_query(postgres, bool(skip_numbers), bool(skip_providers))
    rows = conn.execute(query, params).all()
    if rows:
        conn.execute(_LEASE, {"ids": [r.id for r in rows], "until": now + lease})
        if sender is not None:
            sender.renew_in(conn, (str(r.phone_number_id) for r in rows), now)
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
            last_inbound_at=r.last_inbound_at,
            leased_until=now + lease,
            provider=str(r.provider),
        )
        for r in rows
    ]


# Built once, values as parameters: they run for every send.
_RELEASE = (
    wa_outbox.update()
    .where(wa_outbox.c.id == bindparam("job_id"), wa_outbox.c.state == "sending")
    .values(state="pending", next_attempt_at=bindparam("at"))
)
_RESCHEDULE = (
    wa_outbox.update()
    .where(wa_outbox.c.id == bindparam("job_id"))
    .values(
        state="pending",
        attempts=bindparam("tries"),
        next_attempt_at=bindparam("at"),
        last_error=bindparam("error"),
    )
)
_SENT_MESSAGE = (
    messages.update()
    .where(messages.c.id == bindparam("message_row"))
    .values(
        provider_message_id=bindparam("provider_id"),
        provider=bindparam("sender"),
        sent_at=bindparam("at"),
    )
)
_SENT_OUTBOX = (
    wa_outbox.update()
    .where(wa_outbox.c.id == bindparam("job_id"))
    .values(state="sent", attempts=bindparam("tries"), last_error=None)
)
_SENT_CONTACT = (
    contacts.update()
    .where(contacts.c.id == bindparam("contact"))
    .values(last_outbound_at=bindparam("at"))
)
_STATUS = select(messages.c.status).where(messages.c.id == bindparam("message_row"))
_FAILED_MESSAGE = (
    messages.update()
    .where(messages.c.id == bindparam("message_row"))
    .values(
        provider=bindparam("sender"),
        status=bindparam("new_status"),
        status_at=bindparam("at"),
        error_code=bindparam("code"),
        error_title=bindparam("title"),
    )
)
_FAILED_OUTBOX = (
    wa_outbox.update()
    .where(wa_outbox.c.id == bindparam("job_id"))
    .values(state="failed", attempts=bindparam("tries"), last_error=bindparam("error"))
)


def release_in(conn: Connection, job: Job, at: datetime) -> None:
    """Give the row back unattempted (pacing, halts, order)."""
    conn.execute(_RELEASE, {"job_id": job.id, "at": at})


def reschedule_in(conn: Connection, job: Job, *, attempts: int, at: datetime, error: str) -> None:
    conn.execute(_RESCHEDULE, {"job_id": job.id, "tries": attempts, "at": at, "error": error})


def mark_sent_in(conn: Connection, job: Job, provider_message_id: str, now: datetime) -> None:
    """The provider accepted it: record its id (Meta's wamid, Twilio's SM… sid) and who sent
    it; the status stays ``queued`` for the status webhooks, which find it by that id."""
    conn.execute(
        _SENT_MESSAGE,
        {
            "message_row": job.message_id,
            "provider_id": provider_message_id,
            "sender": job.provider,
            "at": now,
        },
    )
    conn.execute(_SENT_OUTBOX, {"job_id": job.id, "tries": job.attempts + 1})
    if job.contact_id is not None:
        conn.execute(_SENT_CONTACT, {"contact": job.contact_id, "at": now})


def mark_failed_in(
    conn: Connection,
    job: Job,
    *,
    code: int | str | None,
    error: str,
    title: str,
    now: datetime,
    flag: bool = False,
    on_failed: FailureHook | None = None,
) -> None:
    """Failed for good: the message is ``failed`` with the code; the contact maybe flagged;
    ``on_failed`` runs in the same transaction, so what it writes is there exactly when
    the failure is."""
    current = conn.execute(_STATUS, {"message_row": job.message_id}).scalar()
    status = advance_status(
        DeliveryStatus.parse(current) if current else None, DeliveryStatus.FAILED
    )
    conn.execute(
        _FAILED_MESSAGE,
        {
            "message_row": job.message_id,
            "sender": job.provider,
            "new_status": status.value,
            "at": now,
            "code": str(code) if code is not None else "local",
            "title": title,
        },
    )
    conn.execute(_FAILED_OUTBOX, {"job_id": job.id, "tries": job.attempts + 1, "error": error})
    if flag and job.contact_id is not None and isinstance(code, int):
        flag_contact(conn, job.contact_id, code, now)
    if on_failed is not None:
        on_failed(conn, job, str(code) if code is not None else None, title, now)


def use_fallback_in(conn: Connection, job: Job) -> None:
    """Replace the free-form request by its template fallback, on the message too."""
    assert job.fallback is not None
    label = template_label(orjson.loads(job.fallback))
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


Write = Callable[[Connection], None]


class Outcomes:
    """The outcome writes of a sender's pass (sent, failed, released, rescheduled), committed
    together: one transaction for a few sends instead of one each.

    On SQLite every transaction waits its turn for the one write lock and ends with an fsync;
    a transaction per reply (or per locally refused send) was most of the sender's store
    time and stood in front of the inbox writer and the processor. Writes are committed when
    the oldest has waited ``max_seconds``, when ``max_count`` are waiting, and at the end of
    every pass (:meth:`flush`), so they are at most that late.

    A crash before the commit loses only the record: the rows are still ``sending`` and are
    claimed again when their lease runs out (a send accepted then may go twice, as a crash
    between the send and its record always could). If the shared transaction fails, each
    write is retried in a transaction of its own, so one bad write cannot lose the others.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_seconds: float = 0.02,
        max_count: int = 50,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._max_seconds = max_seconds
        self._max_count = max_count
        self._monotonic = monotonic
        self._writes: list[tuple[int, Write]] = []  # (outbox id, write), in order
        self._since = 0.0  # monotonic time of the oldest waiting write

    def __len__(self) -> int:
        return len(self._writes)

    def add(self, job_id: int, write: Write) -> None:
        """Queue one row's write; commits the waiting ones if they are due."""
        if not self._writes:
            self._since = self._monotonic()
        self._writes.append((job_id, write))
        self.flush_due()

    def flush_due(self) -> None:
        """Commit the waiting writes if the oldest is ``max_seconds`` old or there are
        ``max_count`` of them."""
        if self._writes and (
            len(self._writes) >= self._max_count
            or self._monotonic() - self._since >= self._max_seconds
        ):
            self.flush()

    def flush(self) -> None:
        """Commit every waiting write (one transaction; one each if that fails)."""
        writes, self._writes = self._writes, []
        if not writes:
            return
        try:
            with self._engine.begin() as conn:
                for _job_id, write in writes:
                    write(conn)
            return
        except Exception:
            if len(writes) == 1:
                log.exception(
                    "outbox %s: outcome not recorded; retried when its lease ends", writes[0][0]
                )
                return
            log.warning(
                "outcomes of %d outbox rows failed together; recording them one by one",
                len(writes),
                exc_info=True,
            )
        for job_id, write in writes:
            try:
                with self._engine.begin() as conn:
                    write(conn)
            except Exception:
                log.exception(
                    "outbox %s: outcome not recorded; retried when its lease ends", job_id
                )


def last_inbound_at(engine: Engine, job: Job) -> datetime | None:
    """When the recipient last wrote to us: by the message's contact (read with the
    claim), else by phone."""
    if job.contact_id is not None:
        return job.last_inbound_at
    query = select(contacts.c.last_inbound_at).where(
        contacts.c.account_id == job.account_id, contacts.c.phone == job.recipient
    )
    with engine.connect() as conn:
        found: datetime | None = conn.execute(query).scalar()
    return found
