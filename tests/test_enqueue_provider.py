"""``enqueue_send`` stores the sending number's provider on the new ``messages`` row, so a
row that is queued, paced or halted (never sent yet) is exported with the right provider.

Every test runs on SQLite and PostgreSQL (the ``engine`` fixture).
"""

from __future__ import annotations

from conftest import PHONE_NUMBER_ID
from sqlalchemy import Engine
from whatsapp_support import ALICE, message_row

from wacrm.export import export_rows
from wacrm.store.accounts import register_number
from wacrm.store.whatsapp_outbox import enqueue_send
from wacrm.whatsapp.meta_bodies import text_message

TWILIO_NUMBER = "whatsapp:+14155238886"


def queue(engine: Engine, account_id: int, number: str) -> int:
    with engine.begin() as conn:
        message_id, _ = enqueue_send(
            conn,
            account_id=account_id,
            phone_number_id=number,
            body=text_message(ALICE, f"from {number}"),
        )
    return message_id


def test_given_twilio_and_meta_numbers_when_enqueued_then_rows_carry_their_provider_unsent(
    engine: Engine, account_id: int
) -> None:
    register_number(engine, account_id, TWILIO_NUMBER, provider="twilio")

    via_twilio = queue(engine, account_id, TWILIO_NUMBER)
    via_meta = queue(engine, account_id, PHONE_NUMBER_ID)

    assert (message_row(engine, via_twilio).provider, message_row(engine, via_meta).provider) == (
        "twilio",
        "meta",
    )
    exported = {row["id"]: row for row in export_rows(engine, "messages")}
    assert (exported[via_twilio]["provider"], exported[via_twilio]["status"]) == (
        "twilio",
        "queued",
    )
    assert exported[via_meta]["provider"] == "meta"


def test_given_unregistered_number_when_enqueued_then_provider_is_meta(
    engine: Engine, account_id: int
) -> None:
    message_id = queue(engine, account_id, "999000111")

    assert message_row(engine, message_id).provider == "meta"
