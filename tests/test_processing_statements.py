"""The processor's per-message statements, made fewer: the open episode in one query, a
first message's language told without reading its (empty) history, and the CRM change of
a new record inserted without a lookup first. Each keeps its old meaning."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, event
from test_rules_support import T0, add_contact, inbound, outbound, rows, runtime, text_event

from wacrm.rules import runtime as runtime_module
from wacrm.rules.episodes import current_episode, recent_inbound_texts
from wacrm.rules.language import LanguageDetector
from wacrm.store.outbox import enqueue_crm_change
from wacrm.store.schema import contacts, crm_outbox


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    found = LanguageDetector()
    found.warm_up()
    return found


def _episode(engine: Engine, account_id: int, contact: int) -> int | None:
    with engine.connect() as conn:
        found = current_episode(conn, account_id, contact)
    return None if found is None else found.message_id


def test_given_no_answer_yet_when_episode_read_then_first_inbound_message(
    engine: Engine, account_id: int
) -> None:
    contact = add_contact(engine, account_id)
    first = inbound(engine, account_id, contact, T0)
    inbound(engine, account_id, contact, T0 + timedelta(minutes=1))
    outbound(engine, account_id, contact, T0 + timedelta(minutes=2), rule="price-list")

    assert _episode(engine, account_id, contact) == first  # an automatic reply is no answer


def test_given_agent_answered_when_episode_read_then_first_message_after_the_answer(
    engine: Engine, account_id: int
) -> None:
    contact = add_contact(engine, account_id)
    inbound(engine, account_id, contact, T0)
    outbound(engine, account_id, contact, T0 + timedelta(minutes=1))
    outbound(engine, account_id, contact, T0 + timedelta(minutes=3), status="failed")
    after = inbound(engine, account_id, contact, T0 + timedelta(minutes=2))
    inbound(engine, account_id, contact, T0 + timedelta(minutes=4))

    assert _episode(engine, account_id, contact) == after  # a failed answer is no answer


def test_given_agent_answered_last_when_episode_read_then_none(
    engine: Engine, account_id: int
) -> None:
    contact = add_contact(engine, account_id)
    inbound(engine, account_id, contact, T0)
    outbound(engine, account_id, contact, T0 + timedelta(minutes=1))

    assert _episode(engine, account_id, contact) is None


@pytest.mark.parametrize("new_contact", [True, False])
def test_given_contacts_first_message_when_rules_run_then_language_from_it_without_history(
    engine: Engine,
    account_id: int,
    detector: LanguageDetector,
    monkeypatch: pytest.MonkeyPatch,
    new_contact: bool,
) -> None:
    contact = add_contact(engine, account_id)
    row_id = inbound(engine, account_id, contact, T0, "متى يوصل الطلب؟")
    read: list[int] = []
    real = recent_inbound_texts

    def recent(conn: Any, contact_id: int, limit: int = 5) -> list[str]:
        read.append(contact_id)
        return real(conn, contact_id, limit)

    monkeypatch.setattr(runtime_module, "recent_inbound_texts", recent)

    with engine.begin() as conn:
        runtime(detector=detector).on_message(
            conn,
            account_id=account_id,
            contact_id=contact,
            message=text_event("متى يوصل الطلب؟", "wamid.first"),
            message_row_id=row_id,
            now=T0,
            new_contact=new_contact,
        )

    assert rows(engine, contacts)[0].language == "ar"
    assert read == ([] if new_contact else [contact])


def _statements(engine: Engine) -> list[str]:
    seen: list[str] = []

    def before(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
        seen.append(statement.split()[0].upper())

    event.listen(engine, "before_cursor_execute", before)
    return seen


def test_given_new_record_when_nothing_pending_then_inserted_by_one_statement(
    engine: Engine, account_id: int
) -> None:
    seen = _statements(engine)
    with engine.begin() as conn:
        enqueue_crm_change(
            conn,
            account_id=account_id,
            object="tickets",
            record_key="tkt:wamid.1",
            operation="create",
            properties={"subject": "price?"},
            contact_key="phone:+966501234567",
            urgent=True,
            now=T0,
            new_record=True,
        )

    assert [s for s in seen if s in ("SELECT", "INSERT", "UPDATE")] == ["INSERT"]
    (row,) = rows(engine, crm_outbox)
    assert (row.operation, row.urgent, row.state) == ("create", 1, "pending")
    assert orjson.loads(row.payload) == {
        "properties": {"subject": "price?"},
        "contact_key": "phone:+966501234567",
    }


def test_given_new_record_when_a_change_is_pending_after_all_then_merged_into_it(
    engine: Engine, account_id: int
) -> None:
    with engine.begin() as conn:
        first = enqueue_crm_change(
            conn,
            account_id=account_id,
            object="messages",
            record_key="msg:wamid.1",
            properties={"body": "price?", "status": "received"},
            now=T0,
        )
        again = enqueue_crm_change(
            conn,
            account_id=account_id,
            object="messages",
            record_key="msg:wamid.1",
            properties={"status": "read"},
            contact_key="phone:+966501234567",
            urgent=True,
            now=T0,
            new_record=True,
        )

    assert again == first
    (row,) = rows(engine, crm_outbox)
    assert row.urgent == 1
    assert orjson.loads(row.payload) == {
        "properties": {"body": "price?", "status": "read"},
        "contact_key": "phone:+966501234567",
    }
