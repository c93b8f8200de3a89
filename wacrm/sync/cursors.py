"""Bookmarks per (account, connector, CRM object, direction), stored in ``cursors``.

A bookmark holds the connector's own cursor (opaque to us) plus the newest modification time
stored and, for the records at exactly that time, a fingerprint of what was stored. Reads are
inclusive (``>=``), so the records sharing the boundary time come again; the fingerprints
recognise them as already stored, while a record changed again within the same instant (a
different fingerprint) is still applied. A bookmark never moves backwards (Singer SDK): that
would mean re-reading history, or a connector bug, and is refused loudly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, select

from wacrm.store.schema import cursors
from wacrm.store.unique import dialect_insert


class CursorWentBackwards(RuntimeError):
    """A connector returned records older than the stored bookmark's boundary."""


@dataclass(frozen=True, slots=True)
class Bookmark:
    cursor: str | None = None
    at: datetime | None = None
    seen: dict[str, str] = field(default_factory=dict)  # key → fingerprint, records at ``at``

    def already_stored(self, key: str, modified_at: datetime, fingerprint: str) -> bool:
        return modified_at == self.at and self.seen.get(key) == fingerprint

    def advanced(self, cursor: str | None, stored: list[tuple[str, datetime, str]]) -> Bookmark:
        """The bookmark after ``stored`` (key, modified_at, fingerprint) are safely stored."""
        at, seen = self.at, dict(self.seen)
        for key, modified_at, fingerprint in stored:
            if at is None or modified_at > at:
                at, seen = modified_at, {}
            if modified_at == at:
                seen[key] = fingerprint
        return Bookmark(cursor if cursor is not None else self.cursor, at, seen)


def fingerprint(properties: dict[str, Any]) -> str:
    data = orjson.dumps(properties, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def load_bookmark(
    conn: Connection, account_id: int, connector: str, object: str, direction: str = "in"
) -> Bookmark:
    raw = conn.execute(
        select(cursors.c.value).where(
            cursors.c.account_id == account_id,
            cursors.c.connector == connector,
            cursors.c.object == object,
            cursors.c.direction == direction,
        )
    ).scalar()
    if raw is None:
        return Bookmark()
    data = orjson.loads(raw)
    at = datetime.fromisoformat(data["at"]) if data.get("at") else None
    return Bookmark(data.get("cursor"), at, dict(data.get("seen") or {}))


def save_bookmark(
    conn: Connection,
    account_id: int,
    connector: str,
    object: str,
    bookmark: Bookmark,
    now: datetime,
    direction: str = "in",
) -> None:
    """Upsert the bookmark, in the caller's transaction (with the records it covers)."""
    current = load_bookmark(conn, account_id, connector, object, direction)
    if current.at is not None and bookmark.at is not None and bookmark.at < current.at:
        raise CursorWentBackwards(
            f"{connector} {object}: bookmark would move back from {current.at.isoformat()} "
            f"to {bookmark.at.isoformat()}"
        )
    value = orjson.dumps(
        {
            "cursor": bookmark.cursor,
            "at": bookmark.at.isoformat() if bookmark.at else None,
            "seen": bookmark.seen,
        }
    ).decode()
    statement = dialect_insert(conn.dialect.name, cursors).values(
        account_id=account_id,
        connector=connector,
        object=object,
        direction=direction,
        value=value,
        updated_at=now,
    )
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["account_id", "connector", "object", "direction"],
            set_={"value": value, "updated_at": now},
        )
    )
