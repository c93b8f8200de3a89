"""Writing changes into the CRM outbox, coalesced per record.

Ten updates to one contact before the next flush become one pending row whose properties are
the merge of the ten (later values win; ``tags`` are merged as sets by the caller's payload).
The partial unique index ``uq_crm_outbox_pending`` keeps at most one pending row per record.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, select

from wacrm.store.schema import crm_outbox
from wacrm.store.unique import insert_new

# Built once, values as parameters: this runs several times for every inbound message, and
# building and keying a statement per call cost more than running it.
_PENDING = (
    select(crm_outbox.c.id, crm_outbox.c.payload, crm_outbox.c.urgent)
    .where(
        crm_outbox.c.account_id == bindparam("account"),
        crm_outbox.c.object == bindparam("object"),
        crm_outbox.c.record_key == bindparam("key"),
        crm_outbox.c.state == "pending",
    )
    .with_for_update()
)
_MERGE = (
    crm_outbox.update()
    .where(crm_outbox.c.id == bindparam("row_id"))
    .values(
        payload=bindparam("new_payload"),
        urgent=bindparam("new_urgent"),
        updated_at=bindparam("at"),
    )
)
_INSERT = crm_outbox.insert()


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
    new_record: bool = False,
) -> int:
    """Add (or merge into) the pending outbox row for one CRM record; returns its id.

    Runs inside the caller's transaction, so the change is durable exactly when the event
    that caused it is. ``new_record``: the record is new (a ticket or message activity this
    event creates), so no pending row is expected: the insert goes first and the lookup is
    made only if ``uq_crm_outbox_pending`` says there is one after all (one statement
    instead of two, on every inbound message).
    """
    now = now or datetime.now(UTC)
    values = {
        "account_id": account_id,
        "object": object,
        "record_key": record_key,
        "operation": operation,
        "payload": orjson.dumps({"properties": properties, "contact_key": contact_key}).decode(),
        "state": "pending",
        "urgent": int(urgent),
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }
    if new_record:
        new_id = insert_new(conn, crm_outbox, values)
        if new_id is not None:
            return new_id
    existing = conn.execute(
        _PENDING, {"account": account_id, "object": object, "key": record_key}
    ).first()
    if existing is not None:
        payload = orjson.loads(existing.payload)
        payload["properties"].update(properties)
        if contact_key is not None:
            payload["contact_key"] = contact_key
        conn.execute(
            _MERGE,
            {
                "row_id": existing.id,
                "new_payload": orjson.dumps(payload).decode(),
                "new_urgent": int(bool(existing.urgent) or urgent),
                "at": now,
            },
        )
        return int(existing.id)
    result = conn.execute(_INSERT, values)
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])
