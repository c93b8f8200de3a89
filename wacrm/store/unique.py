"""INSERT ... ON CONFLICT DO NOTHING, the one way the store settles races on a unique key.

Two workers meeting the same new contact, firing the same rule or opening the same ticket
both run the insert; the unique index lets one row in and the other insert does nothing,
instead of one transaction failing (check-then-insert would race). The same statement works
on SQLite and PostgreSQL.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert


@functools.cache
def insert_ignoring_duplicates(dialect: str, table: Table) -> Insert:
    """The statement for ``table`` on ``dialect``, returning the new row's id (none when a
    unique key already held the row). Built once per table: it runs on every message."""
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    # RETURNING, not rowcount: with implicit RETURNING, psycopg reports a rowcount of -1.
    return insert.on_conflict_do_nothing().returning(table.c.id)


def insert_new(conn: Connection, table: Table, values: Mapping[str, Any]) -> int | None:
    """Insert ``values`` unless a unique key of ``table`` already holds such a row;
    the new row's id, or None."""
    new_id = conn.execute(insert_ignoring_duplicates(conn.dialect.name, table), dict(values))
    found = new_id.scalar()
    return None if found is None else int(found)
