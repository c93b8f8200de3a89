"""Writing changes into the CRM outbox, coalesced per record.

Ten updates to one contact before the next flush become one pending row whose properties are
the merge of the ten (later values win; ``tags`` are merged as sets by the caller's payload).
The partial unique index ``uq_crm_outbox_pending`` keeps at most one pending row per record.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, select

from wacrm.store.schema import crm_outbox


def enqueue_crm_change(
    conn: Connection,
    *,
    account_id: int,
    object: str,
    record_key: str,
    properties: dict[str, Any],
    operation: str = "upsert",
    contact_key: str | None = None,
    urgent: bool = False,
    now: datetime | None = None,
) -> int:
    """Add (or merge into) the pending outbox row for one CRM record; returns its id.

    Runs inside the caller's transaction, so the change is durable exactly when the event
    that caused it is.
    """
    now = now or datetime.now(UTC)
    existing = conn.execute(
        select(crm_outbox.c.id, crm_outbox.c.payload, crm_outbox.c.urgent)
        .where(
            crm_outbox.c.account_id == account_id,
            crm_outbox.c.object == object,
            crm_outbox.c.record_key == record_key,
            crm_outbox.c.state == "pending",
        )
        .with_for_update()
    ).first()
    if existing is not None:
        payload = orjson.loads(existing.payload)
        payload["properties"].update(properties)
        if contact_key is not None:
            payload["contact_key"] = contact_key
        conn.execute(
            crm_outbox.update()
            .where(crm_outbox.c.id == existing.id)
            .values(
                payload=orjson.dumps(payload).decode(),
                urgent=int(bool(existing.urgent) or urgent),
                updated_at=now,
            )
        )
        return int(existing.id)
    result = conn.execute(
        crm_outbox.insert().values(
            account_id=account_id,
            object=object,
            record_key=record_key,
            operation=operation,
            payload=orjson.dumps({"properties": properties, "contact_key": contact_key}).decode(),
            state="pending",
            urgent=int(urgent),
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
    )
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])
