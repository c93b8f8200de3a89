"""Rules against the store: replies queued for sending, CRM changes, tasks, tickets and
events written in the caller's transaction, each firing once however often it runs."""

from __future__ import annotations

from datetime import datetime

import orjson
from conftest import PHONE_NUMBER_ID
from sqlalchemy import Engine
from test_rules_support import T0, add_contact, count, hours, inbound, outbound, rows, runtime

from wacrm.model import DeliveryStatus, FieldChange, InboundMessage, MessageType, StatusUpdate
from wacrm.rules.actions import apply_actions
from wacrm.rules.plans import EventEmit, PlannedAction, Skipped, TaskCreate, TicketOpen
from wacrm.store.accounts import ensure_account
from wacrm.store.schema import (
    contacts,
    crm_outbox,
    messages,
    rule_events,
    rule_firings,
    tasks,
    tickets,
    wa_outbox,
)
from wacrm.workers.inbound import handle_message

PRICE_LIST = "Starter 9.99 USD/month"


def _inbound_message(text: str, wamid: str = "wamid.HBgMOTY2", at: datetime = T0) -> InboundMessage:
    return InboundMessage(
        provider="meta",
        provider_message_id=wamid,
        phone_number_id=PHONE_NUMBER_ID,
        from_wa_id="966501234567",
        from_user_id=None,
        profile_name="Layla",
        timestamp=at,
        type=MessageType.TEXT,
        raw_type="text",
        text=text,
    )


def _receive(engine: Engine, account_id: int, message: InboundMessage) -> list[PlannedAction]:
    """What the inbox processor does with a message, rules included, in one transaction."""
    rules = runtime()
    with engine.begin() as conn:
        outcome = handle_message(
            conn,
            account_id=account_id,
            message=message,
            raw={"id": message.provider_message_id},
            now=message.timestamp,
        )
        return rules.on_message(
            conn,
            account_id=account_id,
            contact_id=outcome.contact_id,
            message=message,
            message_row_id=outcome.message_id,
            now=message.timestamp,
        )


def test_given_arabic_price_question_when_received_then_price_list_queued_for_sending(
    engine: Engine, account_id: int
) -> None:
    done = _receive(engine, account_id, _inbound_message("السعر؟"))

    assert [p.rule for p in done] == ["price-list", "price-list"]
    (job,) = rows(engine, wa_outbox)
    assert job.phone_number_id == PHONE_NUMBER_ID
    assert job.recipient == "+966501234567"
    (question,) = rows(engine, messages, direction="in")
    assert orjson.loads(job.request) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+966501234567",
        "type": "text",
        "text": {"body": PRICE_LIST, "preview_url": False},
        "context": {"message_id": "wamid.HBgMOTY2"},
    }
    (reply,) = rows(engine, messages, direction="out")
    assert (reply.rule, reply.status, reply.in_reply_to) == ("price-list", "queued", question.id)
    (contact,) = rows(engine, contacts)
    assert orjson.loads(contact.tags) == ["price-enquiry"]
    (change,) = rows(engine, crm_outbox, object="contacts")
    assert orjson.loads(change.payload)["properties"]["tags"] == ["price-enquiry"]


def test_given_same_message_processed_twice_when_rules_run_then_one_reply(
    engine: Engine, account_id: int
) -> None:
    message = _inbound_message("price?")
    rules = runtime()
    _receive(engine, account_id, message)
    contact_id = rows(engine, contacts)[0].id
    with engine.begin() as conn:
        again = rules.on_message(
            conn,
            account_id=account_id,
            contact_id=contact_id,
            message=message,
            message_row_id=None,
            now=hours(1),
        )

    assert again == []
    assert count(engine, wa_outbox) == 1
    assert count(engine, rule_firings, rule="price-list") == 1


def test_given_task_ticket_and_event_when_applied_twice_then_each_written_once(
    engine: Engine, account_id: int
) -> None:
    contact = add_contact(engine, account_id, name="Ana")
    plan = [
        PlannedAction("r", "k1", "why", TaskCreate("Call Ana", hours(2), owner="maria")),
        PlannedAction("r", "k1", "why", TicketOpen("Ana needs help")),
        PlannedAction("r", "k1", "why", EventEmit("ana.helped", {"x": 1})),
    ]

    for _ in range(2):
        with engine.begin() as conn:
            apply_actions(conn, account_id, contact, plan, T0)

    (task,) = rows(engine, tasks)
    assert (task.subject, task.owner, task.due_at) == ("Call Ana", "maria", hours(2))
    assert task.idempotency_key == "rule:r:k1"
    assert count(engine, tickets, status="open") == 1
    (event,) = rows(engine, rule_events)
    payload = orjson.loads(event.payload)
    assert (event.name, payload["data"], payload["contact_key"]) == (
        "ana.helped",
        {"x": 1},
        "+966501234567",
    )
    creates = {r.object: orjson.loads(r.payload) for r in rows(engine, crm_outbox)}
    assert creates["tasks"]["contact_key"] == "+966501234567"
    assert creates["tasks"]["properties"]["owner"] == "maria"
    assert creates["tickets"]["properties"]["subject"] == "Ana needs help"


def test_given_failed_delivery_when_status_and_local_failure_both_report_it_then_once(
    engine: Engine, account_id: int
) -> None:
    contact = add_contact(engine, account_id, name="Ana")
    sent = outbound(engine, account_id, contact, T0)
    (row,) = rows(engine, messages, id=sent)
    status = StatusUpdate(
        provider="meta",
        provider_message_id=row.provider_message_id,
        phone_number_id=PHONE_NUMBER_ID,
        recipient_id="966501234567",
        status=DeliveryStatus.FAILED,
        raw_status="failed",
        timestamp=hours(1),
        errors=({"code": 131026, "title": "Message undeliverable"},),
    )
    rules = runtime()

    with engine.begin() as conn:
        first = rules.on_status(conn, account_id=account_id, status=status, now=hours(1))
        again = rules.on_status(conn, account_id=account_id, status=status, now=hours(2))
        local = rules.on_send_failed(
            conn,
            account_id=account_id,
            message_row_id=sent,
            error_code="131026",
            error_title="Message undeliverable",
            now=hours(2),
        )

    assert [p.rule for p in first] == ["delivery-failed", "delivery-failed"]
    assert again == [] and local == []
    (task,) = rows(engine, tasks)
    assert task.subject == "WhatsApp message to Ana failed: Message undeliverable (131026)"
    assert orjson.loads(rows(engine, contacts)[0].tags) == ["delivery-failed"]


def test_given_order_status_changed_in_crm_when_rules_run_then_template_from_account_number(
    engine: Engine, account_id: int
) -> None:
    contact = add_contact(
        engine, account_id, name="Layla Hassan", language="ar", order_status_code="SHIPPED"
    )
    change = FieldChange("order_status_code", "SHIPPED", hours(30), "crm")

    with engine.begin() as conn:
        done = runtime().on_field_change(
            conn,
            account_id=account_id,
            contact_id=contact,
            change=change,
            old="PAID",
            now=hours(30),
            change_id="evt-1",
        )

    assert [p.rule for p in done] == ["order-status-update", "order-status-update"]
    (job,) = rows(engine, wa_outbox)
    body = orjson.loads(job.request)
    assert job.phone_number_id == PHONE_NUMBER_ID
    assert body["type"] == "template"
    assert body["template"]["language"] == {"code": "ar"}
    assert body["template"]["components"][0]["parameters"][1] == {"type": "text", "text": "SHIPPED"}
    assert count(engine, rule_events, name="order.status_changed") == 1


def test_given_account_without_number_when_reply_planned_then_skipped_not_queued(
    engine: Engine, account_id: int
) -> None:
    other = ensure_account(engine, "no-number")
    contact = add_contact(engine, other, order_status_code="X")
    inbound(engine, other, contact, T0, "price")
    change = FieldChange("order_status_code", "X", T0, "crm")

    with engine.begin() as conn:
        done = runtime().on_field_change(
            conn, account_id=other, contact_id=contact, change=change, old=None, now=T0
        )

    assert done[0].effect == Skipped("reply", "the account has no WhatsApp number to send from")
    assert count(engine, wa_outbox) == 0
    assert count(engine, rule_events) == 1  # the rule's other actions still happen


def test_given_fifth_unread_message_when_received_then_priority_high_once_per_episode(
    engine: Engine, account_id: int
) -> None:
    for i in range(7):
        _receive(engine, account_id, _inbound_message("hello?", f"wamid.u{i}", hours(i)))

    (contact,) = rows(engine, contacts)
    assert (contact.unread_count, contact.priority) == (7, "high")
    (firing,) = rows(engine, rule_firings, rule="unread-priority")
    (first,) = rows(engine, messages, provider_message_id="wamid.u0")
    assert firing.firing_key == f"unread:{contact.id}:{first.id}"
    priority_changes = [
        r
        for r in rows(engine, crm_outbox, object="contacts")
        if orjson.loads(r.payload)["properties"].get("priority") == "high"
    ]
    assert len(priority_changes) == 1 and priority_changes[0].urgent == 1
