"""The inbox processor on both backends: inbound messages, rules, duplicates, bad rows,
statuses."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from conftest import PHONE_NUMBER_ID
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError
from whatsapp_support import Clock as WaClock
from whatsapp_support import Graph, make_worker

from wacrm.config import Settings
from wacrm.rules.loader import load_ruleset
from wacrm.rules.runtime import RuleRuntime
from wacrm.store.inbox import InboxRow, insert_inbox_rows
from wacrm.store.schema import (
    contacts,
    crm_outbox,
    inbox,
    messages,
    quarantine,
    rule_firings,
    tasks,
    tickets,
    wa_outbox,
)
from wacrm.whatsapp.meta_webhook import split_envelope
from wacrm.workers import inbox as inbox_module
from wacrm.workers import whatsapp_queue
from wacrm.workers.inbound import handle_message
from wacrm.workers.inbox import InboxProcessor
from wacrm.workers.whatsapp_outbox import OutboxPolicy, WhatsAppOutboxWorker

PRICE_LIST = "Starter 9.99 USD, Business 29 USD."
NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
TS = 1_764_061_200  # 2025-11-25T09:00:00Z, a Meta "timestamp"
ALICE = "16315551234"  # wa_id: country code and number, no "+"
BOB = "447400123456"


class Clock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# -- real-shaped Meta payloads -------------------------------------------------------------


def envelope(
    *,
    messages_: Sequence[dict[str, Any]] = (),
    contacts_: Sequence[dict[str, Any]] = (),
    statuses: Sequence[dict[str, Any]] = (),
    errors: Sequence[dict[str, Any]] = (),
    field: str = "messages",
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
    }
    if contacts_:
        value["contacts"] = list(contacts_)
    if messages_:
        value["messages"] = list(messages_)
    if statuses:
        value["statuses"] = list(statuses)
    if errors:
        value["errors"] = list(errors)
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": field, "value": value}]}],
    }


def profile(wa_id: str | None, name: str, user_id: str | None = None) -> dict[str, Any]:
    contact: dict[str, Any] = {"profile": {"name": name}}
    if wa_id:
        contact["wa_id"] = wa_id
    if user_id:
        contact["user_id"] = user_id
    return contact


def message(
    wamid: str, mtype: str, body: dict[str, Any] | None, *, sender: str | None = ALICE, ts: int = TS
) -> dict[str, Any]:
    msg: dict[str, Any] = {"id": wamid, "timestamp": str(ts), "type": mtype}
    if sender:
        msg["from"] = sender
    if body is not None:
        msg[mtype] = body
    return msg


def text(wamid: str, body: str, *, sender: str | None = ALICE, ts: int = TS) -> dict[str, Any]:
    return message(wamid, "text", {"body": body}, sender=sender, ts=ts)


def from_(wa_id: str, name: str, *msgs: dict[str, Any]) -> dict[str, Any]:
    return envelope(messages_=list(msgs), contacts_=[profile(wa_id, name)])


def status(wamid: str, state: str, ts: int, **extra: Any) -> dict[str, Any]:
    return {"id": wamid, "status": state, "timestamp": str(ts), "recipient_id": ALICE, **extra}


def store(engine: Engine, account_id: int, doc: dict[str, Any], times: int = 1) -> None:
    """What the server does with a webhook body: one inbox row per event, duplicates ignored."""
    rows = [
        InboxRow(
            account_id, "meta", e.kind, e.event_id or "", orjson.dumps(e.payload).decode(), NOW
        )
        for e in split_envelope(doc)
    ]
    for _ in range(times):
        with engine.begin() as conn:
            insert_inbox_rows(conn, rows)


def store_raw(engine: Engine, account_id: int, kind: str, event_id: str, payload: str) -> None:
    with engine.begin() as conn:
        insert_inbox_rows(conn, [InboxRow(account_id, "meta", kind, event_id, payload, NOW)])


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def processor(engine: Engine, clock: Clock) -> InboxProcessor:
    return make_processor(engine, clock)


def make_processor(engine: Engine, clock: Clock, **kwargs: Any) -> InboxProcessor:
    """With the shipped rules, as the server runs them (language detection aside: it has
    tests of its own, and these assert replies in the default language)."""
    rules = kwargs.pop("rules", None) or shipped_rules()
    return InboxProcessor(engine, Settings(), rules=rules, clock=clock, **kwargs)


def shipped_rules() -> RuleRuntime:
    return RuleRuntime(load_ruleset(), values={"price_list": PRICE_LIST})


def rows(engine: Engine, table: Any, *where: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(table).where(*where).order_by(table.c.id)).all())


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


# -- inbound messages ----------------------------------------------------------------------


def test_given_text_price_when_processed_then_contact_ticket_reply_and_crm_changes(
    engine: Engine, account_id: int, processor: InboxProcessor
) -> None:
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.A1", "price?")))

    assert processor.process_pending() == 1

    [contact] = rows(engine, contacts)
    assert (contact.phone, contact.wa_id, contact.name) == ("+16315551234", ALICE, "Alice")
    assert contact.unread_count == 1
    assert contact.last_interaction_at == datetime.fromtimestamp(TS, UTC)
    assert contact.last_inbound_at == datetime.fromtimestamp(TS, UTC)
    [ticket] = rows(engine, tickets)
    assert (ticket.contact_id, ticket.status) == (contact.id, "open")
    assert (ticket.subject, ticket.source_message_id) == ("price?", "wamid.A1")
    inbound, reply = rows(engine, messages)
    assert (inbound.direction, inbound.status, inbound.type) == ("in", "received", "text")
    assert (reply.direction, reply.status, reply.rule) == ("out", "queued", "price-list")
    assert (reply.text, reply.in_reply_to, reply.contact_id) == (PRICE_LIST, inbound.id, contact.id)
    [send] = rows(engine, wa_outbox)
    assert (send.message_id, send.phone_number_id, send.state) == (
        reply.id,
        PHONE_NUMBER_ID,
        "pending",
    )
    assert send.recipient == "+16315551234"
    assert send.next_attempt_at == NOW
    assert orjson.loads(send.request) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+16315551234",
        "type": "text",
        "text": {"body": PRICE_LIST, "preview_url": False},
        "context": {"message_id": "wamid.A1"},
    }
    changes = {(r.object, r.record_key): r for r in rows(engine, crm_outbox)}
    assert set(changes) == {
        ("contacts", "+16315551234"),
        ("tickets", "wa:wamid.A1"),
        ("messages", "msg:wamid.A1"),  # the message's activity, not urgent
    }
    assert changes["messages", "msg:wamid.A1"].urgent == 0
    contact_change = orjson.loads(changes["contacts", "+16315551234"].payload)
    # The mirror's fields and the rule's tag, coalesced into one CRM write.
    assert contact_change["properties"] == {
        "phone": "+16315551234",
        "wa_id": ALICE,
        "name": "Alice",
        "unread_count": 1,
        "last_interaction_at": datetime.fromtimestamp(TS, UTC).isoformat(),
        "last_inbound_at": datetime.fromtimestamp(TS, UTC).isoformat(),
        "tags": ["price-enquiry"],
    }
    assert orjson.loads(contact.tags) == ["price-enquiry"]
    ticket_change = changes["tickets", "wa:wamid.A1"]
    assert ticket_change.urgent == 1
    assert ticket_change.operation == "create"
    ticket_payload = orjson.loads(ticket_change.payload)
    assert ticket_payload["contact_key"] == "+16315551234"
    assert ticket_payload["properties"]["subject"] == "price?"
    [done] = rows(engine, inbox)
    assert (done.state, done.processed_at, done.attempts) == ("done", NOW, 1)


def test_given_second_message_from_same_contact_when_processed_then_unread_2_and_no_new_ticket(
    engine: Engine, account_id: int, processor: InboxProcessor
) -> None:
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.A1", "hello")))
    processor.process_pending()
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.A2", "anyone?", ts=TS + 60)))

    assert processor.process_pending() == 1

    [contact] = rows(engine, contacts)
    assert contact.unread_count == 2
    assert contact.last_interaction_at == datetime.fromtimestamp(TS + 60, UTC)
    assert count(engine, tickets) == 1
    # Only the first message opened a ticket, so only it was acknowledged.
    [ack] = rows(engine, messages, messages.c.direction == "out")
    assert ack.rule == "ticket-ack"
    [ticket] = rows(engine, tickets)
    assert ack.text == (
        f"Thanks, we received your message. Ticket #{ticket.id} is open "
        "and an agent will reply soon."
    )
    [change] = rows(engine, crm_outbox, crm_outbox.c.object == "contacts")
    assert orjson.loads(change.payload)["properties"]["unread_count"] == 2


def test_given_older_message_arriving_late_when_processed_then_last_interaction_keeps_newest(
    engine: Engine, account_id: int, processor: InboxProcessor
) -> None:
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.NEW", "later", ts=TS + 600)))
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.OLD", "earlier", ts=TS)))

    processor.process_pending()

    [contact] = rows(engine, contacts)
    assert contact.last_interaction_at == datetime.fromtimestamp(TS + 600, UTC)
    assert contact.unread_count == 2


def test_given_same_event_stored_10_times_when_processed_repeatedly_then_one_of_each(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    doc = from_(ALICE, "Alice", text("wamid.A1", "what is the PRICE"))
    store(engine, account_id, doc, times=10)
    first, second = make_processor(engine, clock), make_processor(engine, clock)

    for _ in range(3):
        first.process_pending()
        store(engine, account_id, doc)  # redelivered while being processed
        second.process_pending()

    assert count(engine, inbox) == 1
    assert count(engine, messages, messages.c.direction == "in") == 1
    assert count(engine, tickets) == 1
    assert count(engine, messages, messages.c.direction == "out") == 1
    assert count(engine, wa_outbox) == 1
    assert rows(engine, contacts)[0].unread_count == 1


def test_given_two_processors_in_threads_when_many_events_then_each_effect_once(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    senders = [(ALICE, "Alice"), (BOB, "Bob"), ("5511987654321", "Carla")]
    for i in range(30):
        wa_id, name = senders[i % 3]
        body = "price please" if i % 5 == 0 else f"message {i}"
        store(engine, account_id, from_(wa_id, name, text(f"wamid.{i}", body, sender=wa_id)), 2)
    workers = [make_processor(engine, clock, batch_size=4) for _ in range(2)]
    start = threading.Barrier(2)
    failures: list[BaseException] = []

    def drain(worker: InboxProcessor) -> None:
        start.wait()
        try:
            while count(engine, inbox, inbox.c.state == "pending"):
                worker.process_pending(limit=8)
        except BaseException as exc:  # e.g. a deadlock: contacts must be locked in one order
            failures.append(exc)

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert failures == []
    assert count(engine, inbox, inbox.c.state == "done") == 30
    assert count(engine, messages, messages.c.direction == "in") == 30
    assert count(engine, tickets) == 3
    assert sorted(c.unread_count for c in rows(engine, contacts)) == [10, 10, 10]
    replies = rows(engine, messages, messages.c.direction == "out")
    assert sorted(r.rule for r in replies).count("price-list") == 6
    # Every ticket is acknowledged unless its opening message asked for the price instead.
    opened_by_price = count(engine, tickets, tickets.c.subject == "price please")
    assert sum(r.rule == "ticket-ack" for r in replies) == 3 - opened_by_price
    assert count(engine, wa_outbox) == len(replies)


def test_given_media_location_and_unknown_types_when_processed_then_each_stored_with_raw_type(
    engine: Engine, account_id: int, processor: InboxProcessor
) -> None:
    media = {"mime_type": "image/jpeg", "sha256": "abc", "id": "1203"}
    doc = from_(
        ALICE,
        "Alice",
        message("wamid.IMG", "image", {**media, "caption": "broken screen"}),
        message("wamid.DOC", "document", {**media, "filename": "invoice.pdf"}),
        message("wamid.VID", "video", media),
        message("wamid.LOC", "location", {"latitude": 38.9, "longitude": -77.0, "name": "HQ"}),
        message("wamid.POLL", "poll", {"question": "?"}),
        message("wamid.UNS", "unsupported", None)
        | {"errors": [{"code": 131051, "title": "Message type unknown"}]},
    )
    store(engine, account_id, doc)

    assert processor.process_pending() == 6

    stored = {
        m.provider_message_id: m for m in rows(engine, messages, messages.c.direction == "in")
    }
    assert {k: m.type for k, m in stored.items()} == {
        "wamid.IMG": "image",
        "wamid.DOC": "document",
        "wamid.VID": "video",
        "wamid.LOC": "location",
        "wamid.POLL": "poll",
        "wamid.UNS": "unsupported",
    }
    assert stored["wamid.IMG"].text == "broken screen"
    assert stored["wamid.LOC"].text == "HQ"
    assert (stored["wamid.UNS"].error_code, stored["wamid.UNS"].error_title) == (
        "131051",
        "Message type unknown",
    )
    assert orjson.loads(stored["wamid.POLL"].payload)["poll"] == {"question": "?"}
    [ticket] = rows(engine, tickets)
    assert ticket.subject == "broken screen"
    assert rows(engine, contacts)[0].unread_count == 6


def test_given_media_without_caption_when_ticket_opened_then_subject_names_type_and_sender(
    engine: Engine, account_id: int, processor: InboxProcessor
) -> None:
    store(engine, account_id, from_(ALICE, "Alice", message("wamid.V", "video", {"id": "9"})))

    processor.process_pending()

    assert rows(engine, tickets)[0].subject == "WhatsApp video from Alice"
    [ack] = rows(engine, messages, messages.c.direction == "out")
    assert "we received your video" in ack.text


def test_given_reaction_when_processed_then_stored_without_ticket_reply_or_unread(
    engine: Engine, account_id: int, processor: InboxProcessor
) -> None:
    reaction = message("wamid.R", "reaction", {"message_id": "wamid.X", "emoji": "👍"})
    store(engine, account_id, from_(ALICE, "Alice", reaction))

    processor.process_pending()

    assert count(engine, messages) == 1
    assert count(engine, tickets) == 0
    assert rows(engine, contacts)[0].unread_count == 0


def test_given_bad_rows_among_good_when_processed_then_bad_quarantined_and_rest_done(
    engine: Engine, account_id: int, processor: InboxProcessor
) -> None:
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.OK1", "hi")))
    store_raw(engine, account_id, "message", "wamid.NOID", '{"message": {"from": "1"}}')
    store_raw(engine, account_id, "message", "wamid.JSON", "{not json")
    nobody = envelope(messages_=[text("wamid.NOBODY", "hi", sender="not-a-number")])
    store(engine, account_id, nobody)
    store_raw(engine, account_id, "surprise", "x1", "{}")
    store(engine, account_id, from_(BOB, "Bob", text("wamid.OK2", "hi", sender=BOB)))

    assert processor.process_pending() == 6

    states = {r.event_id: (r.state, r.error) for r in rows(engine, inbox)}
    assert states["wamid.OK1"] == ("done", None)
    assert states["wamid.OK2"] == ("done", None)
    assert states["wamid.NOID"][0] == "quarantined"
    assert "KeyError" in states["wamid.NOID"][1]
    assert states["wamid.JSON"][0] == "quarantined"
    assert states["wamid.NOBODY"][0] == "quarantined"
    assert "no usable phone" in states["wamid.NOBODY"][1]
    assert states["x1"] == ("quarantined", "ValueError: unknown inbox kind 'surprise'")
    held = rows(engine, quarantine)
    assert len(held) == 4
    assert {h.source for h in held} == {"inbox"}
    assert all(h.reason for h in held)
    assert {orjson.loads(h.payload)["event_id"] for h in held} == {
        "wamid.NOID",
        "wamid.JSON",
        "wamid.NOBODY",
        "x1",
    }
    # A row that failed half-way left nothing behind: only the good senders exist.
    assert count(engine, contacts) == 2


def test_given_store_failure_mid_batch_when_processed_then_nothing_applied_and_retried(
    engine: Engine, account_id: int, processor: InboxProcessor, monkeypatch: pytest.MonkeyPatch
) -> None:
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.A1", "hi")))
    store(engine, account_id, from_(BOB, "Bob", text("wamid.B1", "hi", sender=BOB)))
    real = handle_message

    def flaky(conn: Any, **kwargs: Any) -> Any:
        if kwargs["message"].provider_message_id == "wamid.B1":
            raise OperationalError("UPDATE contacts", {}, Exception("server closed the connection"))
        return real(conn, **kwargs)

    monkeypatch.setattr(inbox_module, "handle_message", flaky)

    with pytest.raises(OperationalError):
        processor.process_pending()

    # The batch rolled back as a whole: Alice's effects are gone too, nothing is lost.
    assert count(engine, messages) == 0
    assert count(engine, crm_outbox) == 0
    assert {r.event_id: (r.state, r.attempts) for r in rows(engine, inbox)} == {
        "wamid.A1": ("pending", 0),
        "wamid.B1": ("pending", 1),
    }
    monkeypatch.setattr(inbox_module, "handle_message", real)
    assert processor.process_pending() == 2
    assert count(engine, messages, messages.c.direction == "in") == 2
    assert count(engine, tickets) == 2


def test_given_row_failing_in_store_every_time_when_retried_then_quarantined_after_limit(
    engine: Engine, account_id: int, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.A1", "hi")))
    processor = make_processor(engine, clock, store_retries=3)

    def broken(conn: Any, **kwargs: Any) -> Any:
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(inbox_module, "handle_message", broken)
    for _ in range(3):
        with pytest.raises(OperationalError):
            processor.process_pending()

    [row] = rows(engine, inbox)
    assert row.state == "quarantined"
    assert row.error.startswith("repeated store failure: OperationalError")
    assert count(engine, quarantine) == 1
    assert processor.process_pending() == 0


def test_given_username_user_without_phone_when_processed_then_contact_keyed_by_user_id(
    engine: Engine, account_id: int, processor: InboxProcessor
) -> None:
    user_id = "US.13491208655302741918"
    msg = text("wamid.U1", "price", sender=None) | {"from_user_id": user_id}
    store(engine, account_id, envelope(messages_=[msg], contacts_=[profile(None, "Dee", user_id)]))

    assert processor.process_pending() == 1

    [contact] = rows(engine, contacts)
    assert (contact.phone, contact.user_id, contact.name) == (None, user_id, "Dee")
    assert count(engine, tickets) == 1
    [change] = rows(engine, crm_outbox, crm_outbox.c.object == "contacts")
    assert change.record_key == f"user:{user_id}"
    # No phone to send to: the ticket reaches an agent, no reply is queued.
    assert count(engine, wa_outbox) == 0


def test_given_user_id_contact_when_phone_later_revealed_then_same_contact_gets_phone(
    engine: Engine, account_id: int, processor: InboxProcessor
) -> None:
    user_id = "US.13491208655302741918"
    first = text("wamid.U1", "hi", sender=None) | {"from_user_id": user_id}
    store(
        engine, account_id, envelope(messages_=[first], contacts_=[profile(None, "Dee", user_id)])
    )
    second = text("wamid.U2", "hi again", ts=TS + 5) | {"from_user_id": user_id}
    store(
        engine, account_id, envelope(messages_=[second], contacts_=[profile(ALICE, "Dee", user_id)])
    )

    processor.process_pending()

    [contact] = rows(engine, contacts)
    assert (contact.phone, contact.user_id, contact.unread_count) == ("+16315551234", user_id, 2)


@pytest.mark.parametrize(
    ("wa_id", "phone"),
    [
        ("5215512345678", "+525512345678"),  # Mexico's old mobile "1": the number it stands for
        ("19999999999", "+19999999999"),  # unknown to phone metadata, but WhatsApp vouches for it
    ],
)
def test_given_unusual_wa_id_when_processed_then_contact_phone_is_e164(
    engine: Engine, account_id: int, processor: InboxProcessor, wa_id: str, phone: str
) -> None:
    store(engine, account_id, from_(wa_id, "Eve", text("wamid.E1", "hi", sender=wa_id)))

    processor.process_pending()

    [contact] = rows(engine, contacts)
    assert (contact.phone, contact.wa_id) == (phone, wa_id)
    assert rows(engine, wa_outbox)[0].recipient == phone


def test_given_handover_request_when_processed_then_rules_flag_contact_and_reply_once(
    engine: Engine, account_id: int, processor: InboxProcessor
) -> None:
    doc = from_(ALICE, "Alice", text("wamid.H1", "price? I want a human please"))
    store(engine, account_id, doc)
    processor.process_pending()
    store(engine, account_id, doc)  # redelivered later

    processor.process_pending()

    [contact] = rows(engine, contacts)
    assert (orjson.loads(contact.tags), contact.priority) == (["handover"], "high")
    # stop: true keeps the price list (and the ticket acknowledgement) out.
    assert [r.rule for r in rows(engine, messages, messages.c.direction == "out")] == [
        "human-handover"
    ]
    assert count(engine, wa_outbox) == 1


def test_given_system_notice_mentioning_a_keyword_when_processed_then_no_rule_runs(
    engine: Engine, account_id: int, processor: InboxProcessor
) -> None:
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.A1", "hello")))
    notice = message(
        "wamid.SYS",
        "system",
        {"body": "Agent Smith changed their phone number", "type": "user_changed_number"},
    )
    store(engine, account_id, from_(ALICE, "Alice", notice))

    assert processor.process_pending() == 2

    # WhatsApp wrote it, not the customer: no hand-over for the word "Agent".
    assert orjson.loads(rows(engine, contacts)[0].tags) == []
    assert count(engine, rule_firings, rule_firings.c.rule == "human-handover") == 0


def test_given_rules_failing_when_message_processed_then_message_kept_and_failure_held(
    engine: Engine, account_id: int, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    processor = make_processor(engine, clock)

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise ValueError("a rule that cannot run")

    monkeypatch.setattr(RuleRuntime, "on_message", broken)
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.A1", "price?")))

    assert processor.process_pending() == 1

    # The message, contact and ticket stay, so an agent sees the question ...
    assert rows(engine, inbox)[0].state == "done"
    assert count(engine, messages, messages.c.direction == "in") == 1
    assert count(engine, tickets) == 1
    # ... and the rules' failure is kept with its reason, for a replay after the fix.
    [held] = rows(engine, quarantine)
    assert (held.source, held.reason) == ("rules", "ValueError: a rule that cannot run")
    assert orjson.loads(held.payload)["event_id"] == "wamid.A1"
    assert count(engine, wa_outbox) == 0


# -- statuses ------------------------------------------------------------------------------


def outbound(engine: Engine, account_id: int, wamid: str) -> int:
    """An outbound message the sender has already handed to Meta (it has its wamid)."""
    with engine.begin() as conn:
        return int(
            conn.execute(
                messages.insert()
                .values(
                    account_id=account_id,
                    direction="out",
                    provider="meta",
                    provider_message_id=wamid,
                    type="text",
                    text="hi",
                    payload="{}",
                    status="queued",
                    created_at=NOW,
                )
                .returning(messages.c.id)
            ).scalar_one()
        )


@pytest.mark.parametrize(
    ("arrivals", "final"),
    [
        (["read", "sent"], "read"),
        (["sent", "delivered", "sent"], "delivered"),
        (["delivered", "read", "delivered", "sent"], "read"),
        (["failed", "delivered"], "failed"),
        (["sent", "deleted"], "sent"),  # a status Meta adds later is kept, not applied
    ],
)
def test_given_statuses_out_of_order_when_processed_then_status_only_moves_forward(
    engine: Engine,
    account_id: int,
    processor: InboxProcessor,
    arrivals: list[str],
    final: str,
) -> None:
    outbound(engine, account_id, "wamid.OUT")
    for i, state in enumerate(arrivals):
        extra: dict[str, Any] = {}
        if state == "failed":
            extra["errors"] = [{"code": 131026, "title": "Message undeliverable"}]
        # Distinct event ids per arrival (a repeated state is a duplicate delivery).
        doc = envelope(statuses=[status("wamid.OUT", state, TS + i, **extra)])
        store(engine, account_id, doc)
        processor.process_pending()

    [out] = rows(engine, messages)
    assert out.status == final
    if final == "failed":
        assert (out.error_code, out.error_title) == ("131026", "Message undeliverable")
    assert count(engine, inbox, inbox.c.state != "done") == 0


def test_given_all_statuses_in_one_pass_when_read_before_sent_then_read_with_its_time(
    engine: Engine, account_id: int, processor: InboxProcessor
) -> None:
    outbound(engine, account_id, "wamid.OUT")
    doc = envelope(statuses=[status("wamid.OUT", "read", TS + 9), status("wamid.OUT", "sent", TS)])
    store(engine, account_id, doc)

    assert processor.process_pending() == 2

    [out] = rows(engine, messages)
    assert (out.status, out.status_at) == ("read", datetime.fromtimestamp(TS + 9, UTC))


def test_given_status_before_send_committed_when_processed_then_kept_pending_then_applied(
    engine: Engine, account_id: int, processor: InboxProcessor
) -> None:
    store(engine, account_id, envelope(statuses=[status("wamid.LATE", "delivered", TS)]))

    assert processor.process_pending() == 0
    assert processor.process_pending() == 0
    [row] = rows(engine, inbox)
    assert (row.state, row.attempts) == ("pending", 2)

    outbound(engine, account_id, "wamid.LATE")  # the sender's commit lands
    assert processor.process_pending() == 1

    assert rows(engine, messages)[0].status == "delivered"
    assert rows(engine, inbox)[0].state == "done"


def test_given_status_for_unknown_message_when_retries_and_grace_spent_then_done_as_orphan(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    processor = make_processor(engine, clock, status_retries=3, status_grace=timedelta(seconds=30))
    store(engine, account_id, envelope(statuses=[status("wamid.GONE", "sent", TS)]))

    for _ in range(5):  # tried often enough, but not yet old enough
        assert processor.process_pending() == 0
    clock.now = NOW + timedelta(seconds=31)
    assert processor.process_pending() == 1

    [row] = rows(engine, inbox)
    assert row.state == "done"
    assert row.error.startswith("orphan: no outbound message wamid.GONE")
    assert count(engine, quarantine) == 0


def test_given_error_and_field_events_when_processed_then_done_and_kept(
    engine: Engine, account_id: int, processor: InboxProcessor, caplog: pytest.LogCaptureFixture
) -> None:
    store(engine, account_id, envelope(errors=[{"code": 131000, "title": "Something went wrong"}]))
    store(engine, account_id, envelope(field="phone_number_quality_update"))
    store(engine, account_id, envelope(field="account_update"))

    with caplog.at_level("WARNING"):
        assert processor.process_pending() == 3

    assert {(r.kind, r.state) for r in rows(engine, inbox)} == {
        ("error", "done"),
        ("field:phone_number_quality_update", "done"),
        ("field:account_update", "done"),
    }
    assert "131000" in caplog.text


# -- the worker loop -----------------------------------------------------------------------


async def until_done(engine: Engine, n: int, seconds: float = 5.0) -> None:
    """Wait (a bounded time) for ``n`` inbox rows to be done; the test asserts afterwards."""
    for _ in range(int(seconds / 0.05)):
        if count(engine, inbox, inbox.c.state == "done") >= n:
            return
        await asyncio.sleep(0.05)


async def test_given_running_worker_when_woken_then_new_rows_processed_and_stop_ends_it(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    processor = make_processor(engine, clock, poll_seconds=30)  # only a wake can be this quick
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    await asyncio.sleep(0.1)

    store(engine, account_id, from_(ALICE, "Alice", text("wamid.A1", "hi")))
    threading.Thread(target=processor.wake).start()  # as the inbox writer thread would
    await until_done(engine, 1)

    assert count(engine, inbox, inbox.c.state == "done") == 1
    stop.set()
    await asyncio.wait_for(task, timeout=5)


async def test_given_rows_left_by_a_crash_when_worker_starts_then_processed_without_wake(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.A1", "hi")))
    processor = make_processor(engine, clock, poll_seconds=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))

    await until_done(engine, 1)
    stop.set()
    await asyncio.wait_for(task, timeout=5)

    assert count(engine, inbox, inbox.c.state == "done") == 1


async def test_given_pass_failing_once_when_running_then_worker_survives_and_catches_up(
    engine: Engine, account_id: int, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.A1", "hi")))
    processor = make_processor(engine, clock, poll_seconds=0.01)
    real = processor.process_pending
    calls: list[int] = []

    def first_pass_fails(limit: int = 500, **kwargs: Any) -> int:
        calls.append(limit)
        if len(calls) == 1:
            raise OperationalError("SELECT", {}, Exception("could not connect to server"))
        return real(limit, **kwargs)

    monkeypatch.setattr(processor, "process_pending", first_pass_fails)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    await until_done(engine, 1)
    stop.set()
    await asyncio.wait_for(task, timeout=5)

    assert len(calls) >= 2
    assert count(engine, inbox, inbox.c.state == "done") == 1


def reply_to_alice(engine: Engine, account_id: int, wamid: str) -> int:
    """A contact (Alice) and a reply to her that Meta accepted (it has its wamid)."""
    with engine.begin() as conn:
        contact_id = conn.execute(
            contacts.insert()
            .values(
                account_id=account_id,
                phone="+16315551234",
                wa_id=ALICE,
                name="Alice",
                tags="[]",
                unread_count=0,
                created_at=NOW,
                updated_at=NOW,
            )
            .returning(contacts.c.id)
        ).scalar_one()
        return int(
            conn.execute(
                messages.insert()
                .values(
                    account_id=account_id,
                    contact_id=contact_id,
                    direction="out",
                    provider="meta",
                    provider_message_id=wamid,
                    type="text",
                    text="hi",
                    payload="{}",
                    status="sent",
                    created_at=NOW,
                )
                .returning(messages.c.id)
            ).scalar_one()
        )


def test_given_failed_status_reported_by_webhook_and_by_outbox_then_failure_rules_fire_once(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    rules = shipped_rules()  # one runtime, shared by the processor and the outbox worker
    processor = make_processor(engine, clock, rules=rules)
    message_id = reply_to_alice(engine, account_id, "wamid.OUT")
    failed = {"errors": [{"code": 131026, "title": "Message undeliverable"}]}
    store(engine, account_id, envelope(statuses=[status("wamid.OUT", "failed", TS, **failed)]))

    assert processor.process_pending() == 1
    assert rows(engine, messages)[0].status == "failed"
    # The outbox reporting the same message failed (a resend refused) is the same failure.
    with engine.begin() as conn:
        again = rules.on_send_failed(
            conn,
            account_id=account_id,
            message_row_id=message_id,
            error_code="131026",
            error_title="Message undeliverable",
            now=NOW,
        )

    assert again == []
    [contact] = rows(engine, contacts)
    assert "delivery-failed" in orjson.loads(contact.tags)
    [task] = rows(engine, tasks)
    assert task.subject == "WhatsApp message to Alice failed: Message undeliverable (131026)"
    assert count(engine, rule_firings, rule_firings.c.rule == "delivery-failed") == 1


def test_given_delivered_status_when_processed_then_failure_rules_do_not_fire(
    engine: Engine, account_id: int, processor: InboxProcessor
) -> None:
    reply_to_alice(engine, account_id, "wamid.OUT")
    store(engine, account_id, envelope(statuses=[status("wamid.OUT", "delivered", TS)]))

    processor.process_pending()

    assert count(engine, tasks) == 0
    assert orjson.loads(rows(engine, contacts)[0].tags) == []


# -- hand-over to the sender, and batched receipts -----------------------------------------


def sender(engine: Engine, graph: Graph) -> WhatsAppOutboxWorker:
    return make_worker(engine, WaClock(now=NOW), graph.client(), mps=None, pair_limit=False)


def test_given_sender_when_price_question_processed_then_reply_leased_in_that_commit_and_sent(
    engine: Engine, account_id: int, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = Graph()
    worker = sender(engine, graph)
    processor = make_processor(engine, clock, handover=worker)
    now_ts = int(NOW.timestamp())
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.A1", "price?", ts=now_ts)))

    processor.process_pending()

    [row] = rows(engine, wa_outbox)
    # Claimed for the sender in the processor's own transaction: leased, not pending.
    assert (row.state, row.next_attempt_at) == ("sending", NOW + OutboxPolicy().lease)

    def no_claim(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a handed-over reply needs no claim of its own")

    monkeypatch.setattr(whatsapp_queue, "claim", no_claim)
    assert worker.process_due() == 1

    [sent] = graph.bodies
    assert (sent["to"], sent["text"]["body"]) == ("+16315551234", PRICE_LIST)
    assert rows(engine, wa_outbox)[0].state == "sent"


def test_given_claim_for_sender_failing_when_processed_then_message_kept_and_reply_left_pending(
    engine: Engine, account_id: int, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = Graph()
    worker = sender(engine, graph)
    processor = make_processor(engine, clock, handover=worker)
    real_claim = worker.claim_in

    def claim_then_fail(conn: Any, now: datetime) -> Any:
        real_claim(conn, now)  # its writes must go with the savepoint
        raise OperationalError("UPDATE wa_outbox", {}, Exception("database is locked"))

    monkeypatch.setattr(worker, "claim_in", claim_then_fail)
    now_ts = int(NOW.timestamp())
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.A1", "price?", ts=now_ts)))

    assert processor.process_pending() == 1

    assert rows(engine, inbox)[0].state == "done"
    assert rows(engine, wa_outbox)[0].state == "pending"  # the sender's own claim finds it
    assert worker.process_due() == 1
    assert len(graph.bodies) == 1


def test_given_messages_only_pass_when_statuses_pending_then_they_wait_for_a_full_pass(
    engine: Engine, account_id: int, processor: InboxProcessor
) -> None:
    outbound(engine, account_id, "wamid.OUT")
    store(engine, account_id, envelope(statuses=[status("wamid.OUT", "delivered", TS)]))
    store(engine, account_id, from_(BOB, "Bob", text("wamid.B1", "hi", sender=BOB)))

    assert processor.process_pending(kinds="messages") == 1

    assert {r.kind: r.state for r in rows(engine, inbox)} == {
        "status": "pending",
        "message": "done",
    }
    assert processor.process_pending() == 1
    assert rows(engine, messages, messages.c.direction == "out")[0].status == "delivered"


async def test_given_running_worker_when_receipt_arrives_then_taken_within_its_batch_interval(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    processor = make_processor(engine, clock, poll_seconds=30, others_every=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    await asyncio.sleep(0.1)  # the first pass took everything (there was nothing)
    outbound(engine, account_id, "wamid.OUT")
    store(engine, account_id, envelope(statuses=[status("wamid.OUT", "read", TS)]))
    store(engine, account_id, from_(ALICE, "Alice", text("wamid.A1", "hi")))

    processor.wake()  # one wake, for both; the receipt's turn comes by itself
    await until_done(engine, 2)

    assert count(engine, inbox, inbox.c.state == "done") == 2
    stop.set()
    await asyncio.wait_for(task, timeout=5)


def test_given_twilio_inbound_row_when_processed_then_same_contact_message_and_ticket_as_meta(
    engine: Engine, account_id: int, processor: InboxProcessor
) -> None:
    from wacrm.whatsapp.twilio_webhook import inbox_payload

    params = {
        "MessageSid": "SM0123456789abcdef0123456789abcdef",
        "AccountSid": "AC0123456789abcdef0123456789abcdef",
        "From": "whatsapp:+14155552671",
        "To": "whatsapp:+15550783881",
        "Body": "What is the price?",
        "NumMedia": "0",
        "ProfileName": "Sam",
        "WaId": "14155552671",
        "MessageType": "text",
    }
    payload = orjson.dumps(inbox_payload(params, NOW)).decode()
    with engine.begin() as conn:
        insert_inbox_rows(
            conn, [InboxRow(account_id, "twilio", "message", params["MessageSid"], payload, NOW)]
        )

    processor.process_pending()

    with engine.connect() as conn:
        contact = conn.execute(select(contacts.c.phone, contacts.c.unread_count)).one()
        inbound = conn.execute(
            select(messages.c.provider, messages.c.provider_message_id, messages.c.text).where(
                messages.c.direction == "in"
            )
        ).one()
        open_tickets = conn.execute(select(func.count()).select_from(tickets)).scalar_one()
        state = conn.execute(select(inbox.c.state)).scalar_one()
    assert tuple(contact) == ("+14155552671", 1)
    assert tuple(inbound) == ("twilio", params["MessageSid"], "What is the price?")
    assert open_tickets == 1
    assert state == "done"


def test_given_row_of_unknown_provider_when_processed_then_quarantined_with_reason(
    engine: Engine, account_id: int, processor: InboxProcessor
) -> None:
    with engine.begin() as conn:
        insert_inbox_rows(
            conn, [InboxRow(account_id, "carrier-pigeon", "message", "m1", "{}", NOW)]
        )

    processor.process_pending()

    with engine.connect() as conn:
        state, error = conn.execute(select(inbox.c.state, inbox.c.error)).one()
    assert state == "quarantined"
    assert "no parser for provider 'carrier-pigeon'" in error
