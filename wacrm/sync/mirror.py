"""Applying CRM contact changes to the contact mirror (the ``contacts`` table).

Each incoming record is matched to its contact by key (E.164 phone, or ``user:<id>``), then by
CRM id; a CRM contact we have never seen is added when it has a phone. Field by field the
mapping's ownership and conflict rules decide (:mod:`wacrm.sync.conflicts`). Nothing is
written for a record that brings no news, which is how our own writes read back from the CRM
(echoes) end. The caller's transaction also advances the bookmark, so a crash re-reads the
page rather than losing it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Row, String, select
from sqlalchemy.exc import IntegrityError

from wacrm.connectors.base import IncomingRecord
from wacrm.mappings import Mapping
from wacrm.store.keys import contact_record_key
from wacrm.store.outbox import enqueue_crm_change
from wacrm.store.schema import contacts, crm_outbox
from wacrm.sync.conflicts import LocalState, normalise, resolve
from wacrm.sync.crm_ids import key_column

logger = logging.getLogger(__name__)

# Standard fields that are columns of the mirror (others are the CRM's business).
MIRROR_FIELDS = frozenset(
    {
        "phone",
        "wa_id",
        "user_id",
        "name",
        "last_interaction_at",
        "last_inbound_at",
        "order_status_code",
        "priority",
        "language",
        "unread_count",
        "tags",
    }
)


@dataclass(slots=True)
class MirrorStats:
    applied: int = 0  # records that changed the mirror
    unchanged: int = 0  # no news: echoes of our writes, or fields we own
    created: int = 0
    unmatched: int = 0  # no contact and no phone to make one
    merged_back: int = 0  # records whose merged tags were queued for the CRM
    rejected: int = 0  # values the mirror cannot hold (too long, duplicate phone)


def apply_contacts(
    conn: Connection,
    account_id: int,
    mapping: Mapping,
    records: list[IncomingRecord],
    now: datetime,
    stats: MirrorStats,
) -> None:
    for record in records:
        try:
            with conn.begin_nested():  # one bad record must not undo the page
                _apply_one(conn, account_id, mapping, record, now, stats)
        except IntegrityError as exc:
            stats.rejected += 1
            logger.warning(
                "account %s: CRM contact %s not mirrored: %s",
                account_id,
                record.crm_id,
                type(exc.orig).__name__,
            )


def _apply_one(
    conn: Connection,
    account_id: int,
    mapping: Mapping,
    record: IncomingRecord,
    now: datetime,
    stats: MirrorStats,
) -> None:
    row = _find(conn, account_id, record)
    if row is None:
        phone = record.properties.get("phone")
        if not (isinstance(phone, str) and phone.startswith("+")):
            stats.unmatched += 1
            return
        row = _create(conn, account_id, phone, record.crm_id, now)
        stats.created += 1
    key = contact_record_key(row.phone, row.user_id) or record.key
    pending = _pending(conn, account_id, key)
    synced = {"tags": orjson.loads(row.tags_synced)} if row.tags_synced is not None else {}
    local = LocalState(
        values=_values(row, mapping), pending=pending[1] if pending else {}, synced=synced
    )
    remote = {k: v for k, v in record.properties.items() if k in MIRROR_FIELDS}
    result = resolve(mapping, local, remote, record.modified_at)
    changes = _columns(mapping, result.mirror)
    if changes:
        conn.execute(
            contacts.update().where(contacts.c.id == row.id).values(**changes, updated_at=now)
        )
    # Bookkeeping, not a change of the contact: its updated_at stays.
    quiet: dict[str, Any] = {}
    if "tags" in result.synced:
        quiet["tags_synced"] = orjson.dumps(result.synced["tags"]).decode()
    if row.crm_id != record.crm_id:
        quiet["crm_id"] = record.crm_id
    if quiet:
        conn.execute(contacts.update().where(contacts.c.id == row.id).values(**quiet))
    if result.superseded and pending is not None:
        _drop_pending_fields(conn, pending[0], result.superseded)
    if result.outbound:
        enqueue_crm_change(
            conn,
            account_id=account_id,
            object="contacts",
            record_key=key,
            properties=result.outbound,
            now=now,
        )
        stats.merged_back += 1
    if changes:
        stats.applied += 1
    else:
        stats.unchanged += 1


def _find(conn: Connection, account_id: int, record: IncomingRecord) -> Row[Any] | None:
    """By our key when the record carries one; by CRM id for records made in the CRM.

    The row is locked (PostgreSQL) until the page commits: the values compared below must
    still be the contact's when the merge is written, or an inbound message's change made in
    between would be overwritten. Contact first, then its outbox row, as the inbox processor
    takes them, so the two never wait on each other in a cycle."""
    found = key_column("contacts", record.key)
    if found is not None:
        _table, column, value = found
        return conn.execute(
            select(contacts)
            .where(contacts.c.account_id == account_id, contacts.c[column] == value)
            .with_for_update()
        ).first()
    row = conn.execute(
        select(contacts)
        .where(contacts.c.account_id == account_id, contacts.c.crm_id == record.crm_id)
        .with_for_update()
    ).first()
    phone = record.properties.get("phone")
    if row is None and isinstance(phone, str) and phone:
        row = conn.execute(
            select(contacts)
            .where(contacts.c.account_id == account_id, contacts.c.phone == phone)
            .with_for_update()
        ).first()
    return row


def _create(conn: Connection, account_id: int, phone: str, crm_id: str, now: datetime) -> Row[Any]:
    result = conn.execute(
        contacts.insert().values(
            account_id=account_id, phone=phone, crm_id=crm_id, created_at=now, updated_at=now
        )
    )
    assert result.inserted_primary_key is not None
    row = conn.execute(
        select(contacts).where(contacts.c.id == result.inserted_primary_key[0])
    ).first()
    assert row is not None
    return row


def _values(row: Row[Any], mapping: Mapping) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for fm in mapping.fields:
        if fm.field in MIRROR_FIELDS:
            raw = getattr(row, fm.field)
            values[fm.field] = orjson.loads(raw) if fm.field == "tags" and raw else raw
    return values


def _columns(mapping: Mapping, mirror: dict[str, Any]) -> dict[str, Any]:
    """Mirror values as column values; a value the column cannot hold is left out."""
    out: dict[str, Any] = {}
    for name, value in mirror.items():
        fm = mapping.by_field(name)
        kind = fm.type if fm is not None else "string"
        value = normalise(kind, value)
        if name == "tags":
            out[name] = orjson.dumps(sorted(value or [])).decode()
        elif name == "unread_count":
            out[name] = int(value or 0)
        else:
            column_type = contacts.c[name].type
            length = column_type.length if isinstance(column_type, String) else None
            if length is not None and isinstance(value, str) and len(value) > length:
                logger.warning(
                    "CRM value for %s is longer than %d characters; not mirrored", name, length
                )
                continue
            out[name] = value
    return out


def _pending(conn: Connection, account_id: int, key: str) -> tuple[int, dict[str, datetime]] | None:
    """The pending outbox row for this contact: (row id, field → queued at), locked so that
    a change merged into it meanwhile is not lost when queued fields are dropped from it."""
    row = conn.execute(
        select(crm_outbox.c.id, crm_outbox.c.payload, crm_outbox.c.updated_at)
        .where(
            crm_outbox.c.account_id == account_id,
            crm_outbox.c.object == "contacts",
            crm_outbox.c.record_key == key,
            crm_outbox.c.state == "pending",
        )
        .with_for_update()
    ).first()
    if row is None:
        return None
    fields = orjson.loads(row.payload).get("properties") or {}
    return int(row.id), {name: row.updated_at for name in fields}


def _drop_pending_fields(conn: Connection, row_id: int, fields: frozenset[str]) -> None:
    """The CRM's newer value wins: our older queued value must not overwrite it."""
    raw = conn.execute(select(crm_outbox.c.payload).where(crm_outbox.c.id == row_id)).scalar()
    if raw is None:
        return
    payload = orjson.loads(raw)
    props = {k: v for k, v in (payload.get("properties") or {}).items() if k not in fields}
    if not props:
        conn.execute(crm_outbox.delete().where(crm_outbox.c.id == row_id))
        return
    payload["properties"] = props
    conn.execute(
        crm_outbox.update()
        .where(crm_outbox.c.id == row_id)
        .values(payload=orjson.dumps(payload).decode())
    )
