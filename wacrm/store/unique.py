"""INSERT ... ON CONFLICT DO NOTHING, the one way the store settles races on a unique key.

Two workers meeting the same new contact, firing the same rule or opening the same ticket
both run the insert; the unique index lets one row in and the other insert does nothing,
instead of one transaction failing (check-then-insert would race). The same statement works
on SQLite and PostgreSQL; :func:`dialect_insert` is the INSERT both ON CONFLICT forms (do
nothing, do update) are built on.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert


def dialect_insert(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into ``table`` in ``dialect``'s own form, the one with ON CONFLICT."""
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


@functools.cache
def insert_ignoring_duplicates(dialect: str, table: Table, returning: str = "id") -> Insert:
    """The statement for ``table`` on ``dialect``, returning the new row's ``returning``
    column (none when a unique key already held the row). Built once per table: it runs on
    every message."""
    # RETURNING, not rowcount: with implicit RETURNING, psycopg reports a rowcount of -1.
    return dialect_insert(dialect, table).on_conflict_do_nothing().returning(table.c[returning])


def insert_new(
    conn: Connection, table: Table, values: Mapping[str, Any], returning: str = "id"
) -> int | None:
    """Insert ``values`` unless a unique key of ``table`` already holds such a row; the new
    row's ``returning`` column (its id by default), or None."""
    statement = insert_ignoring_duplicates(conn.dialect.name, table, returning)
    found = conn.execute(statement, dict(values)).scalar()
    return None if found is None else int(found)
