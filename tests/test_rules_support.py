"""Helpers for the rules tests (no tests here): a simulated clock and store rows written
the way the inbox processor and the outbox write them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, func, select

from wacrm.model import InboundMessage, MessageType
from wacrm.rules.loader import load_ruleset
from wacrm.rules.runtime import RuleRuntime
from wacrm.store.schema import contacts, messages

# A Monday morning; every test time is T0 + something, never the wall clock.
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PRICE_LIST = "Starter 9.99 USD/month"


def hours(n: float) -> datetime:
    return T0 + timedelta(hours=n)


def runtime(**kwargs: Any) -> RuleRuntime:
    """The shipped rules, as the server would build them."""
    return RuleRuntime(load_ruleset(), values={"price_list": PRICE_LIST}, **kwargs)


def add_contact(
    engine: Engine, account_id: int, phone: str = "+966501234567", **values: Any
) -> int:
    tags = values.pop("tags", [])
    with engine.begin() as conn:
        new_id = conn.execute(
            contacts.insert().values(
                account_id=account_id,
                phone=phone,
                wa_id=phone.lstrip("+"),
                tags=orjson.dumps(sorted(tags)).decode(),
                unread_count=0,
                created_at=T0,
                updated_at=T0,
                **values,
            )
        ).inserted_primary_key
    assert new_id is not None
    return int(new_id[0])


_seq = iter(range(1, 10**9))


def inbound(
    engine: Engine,
    account_id: int,
    contact_id: int,
    at: datetime,
    text: str = "hello?",
    type: str = "text",
) -> int:
    """An inbound message as the processor stores it (row, last_inbound_at, unread + 1)."""
    with engine.begin() as conn:
        new_id = conn.execute(
            messages.insert().values(
                account_id=account_id,
                contact_id=contact_id,
                direction="in",
                provider="meta",
                provider_message_id=f"wamid.in.{next(_seq)}",
                type=type,
                text=text,
                payload="{}",
                status="received",
                status_at=at,
                created_at=at,
            )
        ).inserted_primary_key
        conn.execute(
            contacts.update()
            .where(contacts.c.id == contact_id)
            .values(last_inbound_at=at, unread_count=contacts.c.unread_count + 1, updated_at=at)
        )
    assert new_id is not None
    return int(new_id[0])


def outbound(
    engine: Engine,
    account_id: int,
    contact_id: int,
    at: datetime,
    *,
    rule: str | None = None,
    status: str = "sent",
) -> int:
    """An outbound message (an agent's when ``rule`` is None), sent at ``at``."""
    with engine.begin() as conn:
        new_id = conn.execute(
            messages.insert().values(
                account_id=account_id,
                contact_id=contact_id,
                direction="out",
                provider="meta",
                provider_message_id=f"wamid.out.{next(_seq)}",
                type="text",
                text="answer",
                payload="{}",
                status=status,
                status_at=at,
                rule=rule,
                created_at=at,
            )
        ).inserted_primary_key
        # The outbox sets this for every send, automatic ones included.
        conn.execute(
            contacts.update().where(contacts.c.id == contact_id).values(last_outbound_at=at)
        )
    assert new_id is not None
    return int(new_id[0])


def count(engine: Engine, table: Any, **where: Any) -> int:
    query = select(func.count()).select_from(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def rows(engine: Engine, table: Any, **where: Any) -> list[Any]:
    query = select(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    with engine.connect() as conn:
        return list(conn.execute(query.order_by(table.c[next(iter(table.c.keys()))])).all())


def text_event(text: str, wamid: str = "wamid.lang") -> InboundMessage:
    """An inbound text from +966501234567 to the test number, as the parser makes it."""
    return InboundMessage(
        provider="meta",
        provider_message_id=wamid,
        phone_number_id="106540352242922",
        from_wa_id="966501234567",
        from_user_id=None,
        profile_name=None,
        timestamp=T0,
        type=MessageType.TEXT,
        raw_type="text",
        text=text,
    )
