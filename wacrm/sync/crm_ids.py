"""Remembering the CRM's id for a record we wrote, found by its idempotency key.

Record keys are those of :mod:`wacrm.store.keys`: a contact is its E.164 phone, or
``user:<WhatsApp user id>``; a ticket is ``wa:<provider message id>``; a task is its
idempotency key. Every lookup goes through a unique index, so a 100-record batch costs a few
indexed statements.

Message activities (``msg:<provider message id>``) are deliberately absent: ``messages`` has
no ``crm_id`` column, and none is needed, as every write of an activity is an upsert by its
record key. Their ids are skipped like any key this module does not know.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table, bindparam

from wacrm.store.keys import TICKET_KEY_PREFIX, USER_KEY_PREFIX
from wacrm.store.schema import contacts, tasks, tickets

# object → (table, [(key prefix, column, whether the column keeps the prefix)]).
_TARGETS: dict[str, tuple[Table, tuple[tuple[str, str, bool], ...]]] = {
    "contacts": (contacts, ((USER_KEY_PREFIX, "user_id", False), ("+", "phone", True))),
    "tickets": (tickets, ((TICKET_KEY_PREFIX, "source_message_id", False),)),
    "tasks": (tasks, (("", "idempotency_key", True),)),
}


def key_column(object: str, key: str) -> tuple[Table, str, str] | None:
    """(table, column, value) that a record key names, or None for an unknown form."""
    target = _TARGETS.get(object)
    if target is None:
        return None
    table, forms = target
    for prefix, column, keep in forms:
        if key.startswith(prefix) and len(key) > len(prefix):
            return table, column, key if keep else key[len(prefix) :]
    return None


def store_crm_ids(
    conn: Connection, account_id: int, object: str, pairs: Sequence[tuple[str, str]]
) -> int:
    """Set ``crm_id`` on the rows named by each ``(record_key, crm_id)``; unknown keys are
    skipped (the record may live only in the CRM). Returns how many rows changed.

    A row that already has the id is not written, so it is not locked either: after a
    contact's first confirmation, the ones that follow (one per inbound message) leave the
    contact row alone.
    """
    by_column: dict[tuple[Table, str], list[dict[str, Any]]] = {}
    for key, crm_id in pairs:
        found = key_column(object, key)
        if found is not None:
            table, column, value = found
            by_column.setdefault((table, column), []).append(
                {"acc": account_id, "k": value, "cid": crm_id}
            )
    changed = 0
    for (table, column), params in by_column.items():
        changed += conn.execute(
            table.update()
            .where(
                table.c.account_id == bindparam("acc"),
                table.c[column] == bindparam("k"),
                table.c.crm_id.is_distinct_from(bindparam("cid")),
            )
            .values(crm_id=bindparam("cid")),
            params,
        ).rowcount
    return changed
