"""Export the store's contacts, messages, tickets and tasks, one JSON object per line.

Rows are streamed (server-side cursor on PostgreSQL, batches of :data:`BATCH` rows) so an
export of millions of messages runs in constant memory. Datetimes are ISO-8601 UTC with a
``Z``; every row names its account, since one store holds many.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from sqlalchemy import Engine, Select, select
from sqlalchemy.engine import RowMapping

from wacrm.store.schema import accounts, contacts, messages, tasks, tickets

__all__ = ["BATCH", "FORMATS", "OBJECTS", "ExportError", "export_rows", "write_jsonl"]

BATCH = 500
FORMATS = ("jsonl",)


class ExportError(ValueError):
    """The export cannot start (unknown object or account); the message says why."""


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _tags(raw: str | None) -> list[str]:
    loaded = orjson.loads(raw) if raw else []
    return sorted(str(tag) for tag in loaded) if isinstance(loaded, list) else []


_contact_phone = contacts.c.phone.label("contact_phone")
_account = accounts.c.name.label("account")


def _contacts_query() -> Select[Any]:
    return select(contacts, _account).join(accounts, contacts.c.account_id == accounts.c.id)


def _contact_row(row: RowMapping) -> dict[str, Any]:
    return {
        "id": row["id"],
        "phone": row["phone"],
        "wa_id": row["wa_id"],
        "user_id": row["user_id"],
        "name": row["name"],
        "last_interaction_at": _iso(row["last_interaction_at"]),
        "order_status_code": row["order_status_code"],
        "priority": row["priority"],
        "language": row["language"],
        "unread_count": row["unread_count"],
        "tags": _tags(row["tags"]),
        "crm_id": row["crm_id"],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
        "account": row["account"],
    }


def _messages_query() -> Select[Any]:
    # Outer join: a message may have no contact (a username user with the phone withheld).
    return (
        select(messages, _contact_phone, _account)
        .join(accounts, messages.c.account_id == accounts.c.id)
        .outerjoin(contacts, messages.c.contact_id == contacts.c.id)
    )


def _message_row(row: RowMapping) -> dict[str, Any]:
    return {
        "id": row["id"],
        "direction": row["direction"],
        "provider": row["provider"],
        "provider_message_id": row["provider_message_id"],
        "contact_id": row["contact_id"],
        "contact_phone": row["contact_phone"],
        "type": row["type"],
        "text": row["text"],
        "status": row["status"],
        "status_at": _iso(row["status_at"]),
        "error_code": row["error_code"],
        "error_title": row["error_title"],
        "rule": row["rule"],
        "created_at": _iso(row["created_at"]),
        "sent_at": _iso(row["sent_at"]),
        "account": row["account"],
    }


def _tickets_query() -> Select[Any]:
    return (
        select(tickets, _contact_phone, _account)
        .join(accounts, tickets.c.account_id == accounts.c.id)
        .join(contacts, tickets.c.contact_id == contacts.c.id)
    )


def _ticket_row(row: RowMapping) -> dict[str, Any]:
    return {
        "id": row["id"],
        "contact_id": row["contact_id"],
        "contact_phone": row["contact_phone"],
        "subject": row["subject"],
        "status": row["status"],
        "source_message_id": row["source_message_id"],
        "crm_id": row["crm_id"],
        "created_at": _iso(row["created_at"]),
        "closed_at": _iso(row["closed_at"]),
        "account": row["account"],
    }


def _tasks_query() -> Select[Any]:
    return (
        select(tasks, _contact_phone, _account)
        .join(accounts, tasks.c.account_id == accounts.c.id)
        .join(contacts, tasks.c.contact_id == contacts.c.id)
    )


def _task_row(row: RowMapping) -> dict[str, Any]:
    return {
        "id": row["id"],
        "contact_id": row["contact_id"],
        "contact_phone": row["contact_phone"],
        "subject": row["subject"],
        "owner": row["owner"],
        "due_at": _iso(row["due_at"]),
        "status": row["status"],
        "idempotency_key": row["idempotency_key"],
        "crm_id": row["crm_id"],
        "created_at": _iso(row["created_at"]),
        "account": row["account"],
    }


_Exporter = tuple[Callable[[], Select[Any]], Any, Callable[[RowMapping], dict[str, Any]]]

# object name → (query, the table whose id orders it, row → JSON-ready dict)
_EXPORTERS: dict[str, _Exporter] = {
    "contacts": (_contacts_query, contacts, _contact_row),
    "messages": (_messages_query, messages, _message_row),
    "tickets": (_tickets_query, tickets, _ticket_row),
    "tasks": (_tasks_query, tasks, _task_row),
}
OBJECTS = tuple(_EXPORTERS)


def export_rows(engine: Engine, obj: str, account: str | None = None) -> Iterator[dict[str, Any]]:
    """Return the rows of ``obj`` (one of :data:`OBJECTS`) as JSON-ready dicts, by id.

    ``account`` limits the export to the account of that name; ``None`` exports them all.
    Mistakes raise :class:`ExportError` here, before any row is produced.
    """
    if obj not in _EXPORTERS:
        raise ExportError(f"unknown object {obj!r}; choose from {', '.join(OBJECTS)}")
    build, table, to_dict = _EXPORTERS[obj]
    query = build().order_by(table.c.id)
    if account is not None:
        with engine.connect() as conn:
            found = conn.execute(select(accounts.c.id).where(accounts.c.name == account))
            account_id = found.scalar()
        if account_id is None:
            raise ExportError(f"no account named {account!r}")
        query = query.where(table.c.account_id == account_id)
    return _stream(engine, query, to_dict)


def _stream(
    engine: Engine, query: Select[Any], to_dict: Callable[[RowMapping], dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=BATCH).execute(query)
        for row in result.mappings():
            yield to_dict(row)


def write_jsonl(rows: Iterable[dict[str, Any]], out: IO[bytes]) -> int:
    """Write each row as one JSON line to ``out``; return how many were written."""
    count = 0
    for row in rows:
        out.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
        count += 1
    return count
