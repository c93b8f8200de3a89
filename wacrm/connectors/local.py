"""The embedded CRM: generic records with JSON properties, kept in the store.

It behaves like a real CRM from the sync engine's side of the protocol: upsert by external id,
per-record results, a modified-time change feed, custom properties an installer defines, and
users who edit records (:meth:`LocalConnector.update_properties`). So everything upstream can
be exercised, and small installs can run, without any CRM account.

Standard field names are mapped to the CRM's property names through the mapping file
``mappings/local_<object>.yaml`` when there is one; objects without a file keep their names.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from sqlalchemy import Connection, Engine, and_, bindparam, or_, select
from sqlalchemy.exc import SQLAlchemyError

from wacrm.connectors.base import (
    CHILD_OBJECTS,
    OBJECTS,
    ChangePage,
    CheckResult,
    ConnectorError,
    IncomingRecord,
    OutgoingRecord,
    RateLimit,
    fit_text,
)
from wacrm.mappings import TYPES, Mapping, load_mapping, mapping_path
from wacrm.model import WriteResult
from wacrm.store.schema import accounts, local_crm_properties, local_crm_records
from wacrm.store.unique import insert_new

_SLICE_SECONDS = 0.01  # how long one write transaction of a batch may run (see write_batch)

_CURSOR_SEP = "|"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class InvalidValue(ValueError):
    """A property value does not fit its mapped type."""


@dataclass(frozen=True, slots=True)
class PropertyDef:
    name: str
    label: str
    type: str
    options: tuple[str, ...] = ()


class LocalConnector:
    name: ClassVar[str] = "local"
    max_batch: ClassVar[int] = 100
    rate_limit: ClassVar[RateLimit] = RateLimit(1000, 1.0)

    def __init__(
        self, engine: Engine, account_id: int, *, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        # No I/O here: mapping files are read on first use.
        self._engine = engine
        self._account_id = account_id
        self._clock = clock
        self._mappings: dict[str, Mapping | None] = {}

    # -- protocol ------------------------------------------------------------------------

    def check(self) -> CheckResult:
        try:
            with self._engine.connect() as conn:
                found = conn.execute(
                    select(accounts.c.name).where(accounts.c.id == self._account_id)
                ).scalar()
        except SQLAlchemyError as exc:
            return CheckResult(False, f"store not reachable: {type(exc).__name__}")
        if found is None:
            return CheckResult(False, f"account {self._account_id} does not exist")
        return CheckResult(True, f"local CRM of account {found!r}")

    def write_batch(self, object: str, records: Sequence[OutgoingRecord]) -> list[WriteResult]:
        if len(records) > self.max_batch:
            raise ConnectorError(
                f"batch of {len(records)} exceeds the maximum of {self.max_batch}",
                code="BATCH_TOO_LARGE",
            )
        if object not in OBJECTS:
            reason = f"no object {object!r} in the local CRM"
            return [_failure(r.key, "UNKNOWN_OBJECT", reason) for r in records]
        mapping = self._mapping(object)
        now = self._clock()
        results: list[WriteResult] = []
        # The embedded CRM shares the store with the webhook inbox: on SQLite every
        # transaction holds the one write lock, and a batch of 100 message activities in one
        # transaction held it for ~60 ms, in front of each webhook's commit (the auto-reply
        # p99 went from 28 to 84 ms). So the batch commits in slices of about 10 ms. Each
        # write is an upsert by key: a crash between slices repeats nothing when retried.
        while len(results) < len(records):
            deadline = time.monotonic() + _SLICE_SECONDS
            with self._engine.begin() as conn:
                for record in records[len(results) :]:
                    results.append(self._write_one(conn, object, mapping, record, now))
                    if time.monotonic() >= deadline:
                        break
        return results

    def read_changes(
        self, object: str, cursor: str | None, signpost: datetime | None, limit: int
    ) -> ChangePage:
        """Records by (updated_at, id) after ``cursor``, not after ``signpost``.

        The cursor is the (updated_at, id) of the last record returned, so records sharing a
        timestamp are neither skipped nor repeated across pages. ``next_cursor`` is set
        whenever the page has records (store it); ``more`` says whether to read again now.
        """
        if object not in OBJECTS:
            raise ConnectorError(f"no object {object!r} in the local CRM", code="UNKNOWN_OBJECT")
        if limit < 1:
            raise ValueError("limit must be at least 1")
        t = local_crm_records
        query = select(t.c.id, t.c.external_id, t.c.properties, t.c.updated_at).where(
            t.c.account_id == self._account_id, t.c.object == object
        )
        if cursor:
            after_ts, after_id = decode_cursor(cursor)
            query = query.where(
                or_(t.c.updated_at > after_ts, and_(t.c.updated_at == after_ts, t.c.id > after_id))
            )
        if signpost is not None:
            query = query.where(t.c.updated_at <= signpost)
        query = query.order_by(t.c.updated_at, t.c.id).limit(limit + 1)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        page, more = rows[:limit], len(rows) > limit
        mapping = self._mapping(object)
        records = [
            IncomingRecord(
                key=row.external_id,
                crm_id=str(row.id),
                properties=_from_crm(mapping, orjson.loads(row.properties)),
                modified_at=row.updated_at,
            )
            for row in page
        ]
        next_cursor = encode_cursor(page[-1].updated_at, page[-1].id) if page else None
        return ChangePage(records=records, next_cursor=next_cursor, more=more)

    # -- what CRM users and installers do --------------------------------------------------

    def update_properties(self, object: str, key: str, props: dict[str, Any]) -> str:
        """Edit (or create) a record as a CRM user would: CRM property names, always bumps
        its modified time. Returns the record's CRM id."""
        if object not in OBJECTS:
            raise ConnectorError(f"no object {object!r} in the local CRM", code="UNKNOWN_OBJECT")
        encoded = {name: _json_value(value) for name, value in props.items()}
        with self._engine.begin() as conn:
            record_id, _created, _changed = self._upsert(
                conn, object, key, encoded, self._clock(), touch=True
            )
        return str(record_id)

    def define_property(
        self, object: str, name: str, *, label: str, type: str, options: Sequence[str] = ()
    ) -> bool:
        """Create or update a custom property; True when something changed (installers use
        this to show that a second apply is a no-op)."""
        if object not in OBJECTS:
            raise ConnectorError(f"no object {object!r} in the local CRM", code="UNKNOWN_OBJECT")
        if type not in TYPES:
            raise ConnectorError(f"unknown property type {type!r}", code="INVALID_TYPE")
        p = local_crm_properties
        wanted = {"label": label, "type": type, "options": orjson.dumps(list(options)).decode()}
        where = and_(p.c.account_id == self._account_id, p.c.object == object, p.c.name == name)
        with self._engine.begin() as conn:
            row = conn.execute(
                select(p.c.label, p.c.type, p.c.options).where(where).with_for_update()
            ).first()
            if row is None:
                conn.execute(
                    p.insert().values(
                        account_id=self._account_id, object=object, name=name, **wanted
                    )
                )
                return True
            if dict(row._mapping) == wanted:
                return False
            conn.execute(p.update().where(where).values(**wanted))
            return True

    def list_properties(self, object: str) -> list[PropertyDef]:
        p = local_crm_properties
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(p.c.name, p.c.label, p.c.type, p.c.options)
                .where(p.c.account_id == self._account_id, p.c.object == object)
                .order_by(p.c.name)
            ).all()
        return [PropertyDef(r.name, r.label, r.type, tuple(orjson.loads(r.options))) for r in rows]

    # -- internals --------------------------------------------------------------------------

    def _mapping(self, object: str) -> Mapping | None:
        if object not in self._mappings:
            has_file = mapping_path(self.name, object).is_file()
            self._mappings[object] = load_mapping(self.name, object) if has_file else None
        return self._mappings[object]

    def _write_one(
        self,
        conn: Connection,
        object: str,
        mapping: Mapping | None,
        record: OutgoingRecord,
        now: datetime,
    ) -> WriteResult:
        try:
            props, ignored = _to_crm(mapping, record.properties)
        except InvalidValue as exc:
            return _failure(record.key, "INVALID_VALUE", str(exc))
        # Tickets, tasks and message activities: ``contact_key`` → the contact's id.
        if object in CHILD_OBJECTS:
            if not record.contact_key:
                return _failure(record.key, "MISSING_CONTACT_KEY", f"{object} need a contact_key")
            contact_id = self._record_id(conn, "contacts", record.contact_key)
            if contact_id is None:
                # Usually the contact's own write is still queued: worth retrying later.
                reason = f"no contact {record.contact_key!r}"
                return _failure(record.key, "CONTACT_NOT_FOUND", reason, retryable=True)
            props["contact_id"] = contact_id
        record_id, created, changed = self._upsert(conn, object, record.key, props, now)
        extra: dict[str, Any] = {"created": created, "changed": changed}
        if ignored:
            extra["ignored"] = ignored
        return WriteResult(record.key, True, crm_id=str(record_id), extra=extra)

    def _record_id(self, conn: Connection, object: str, key: str) -> int | None:
        params = {"account": self._account_id, "object_name": object, "key": key}
        found = conn.execute(_RECORD_ID, params).scalar()
        return None if found is None else int(found)

    def _upsert(
        self,
        conn: Connection,
        object: str,
        key: str,
        props: dict[str, Any],
        now: datetime,
        *,
        touch: bool = False,
    ) -> tuple[int, bool, bool]:
        """Merge ``props`` into the record ``key``; returns (id, created, changed).

        Without ``touch``, an unchanged record keeps its modified time, so writing back what
        was just read does not show up as a new change and start a sync echo.
        """
        params = {"account": self._account_id, "object_name": object, "key": key}
        for _ in range(2):
            row = conn.execute(_RECORD_LOCKED, params).first()
            if row is not None:
                current = orjson.loads(row.properties)
                merged = {**current, **props}
                changed = merged != current
                if changed or touch:
                    conn.execute(
                        _RECORD_UPDATE,
                        {"record": row.id, "merged": orjson.dumps(merged).decode(), "at": now},
                    )
                return int(row.id), False, changed
            new_id = insert_new(
                conn,
                local_crm_records,
                {
                    "account_id": self._account_id,
                    "object": object,
                    "external_id": key,
                    "properties": orjson.dumps(props).decode(),
                    "created_at": now,
                    "updated_at": now,
                },
            )
            if new_id is not None:
                return new_id, True, True
            # Created concurrently by another writer: merge into theirs.
        raise ConnectorError(f"could not upsert {object} {key!r}", code="CONFLICT", retryable=True)


# Built once, values as parameters: they run for every record of every batch.
_BY_KEY = and_(
    local_crm_records.c.account_id == bindparam("account"),
    local_crm_records.c.object == bindparam("object_name"),
    local_crm_records.c.external_id == bindparam("key"),
)
_RECORD_ID = select(local_crm_records.c.id).where(_BY_KEY)
_RECORD_LOCKED = (
    select(local_crm_records.c.id, local_crm_records.c.properties).where(_BY_KEY).with_for_update()
)
_RECORD_UPDATE = (
    local_crm_records.update()
    .where(local_crm_records.c.id == bindparam("record"))
    .values(properties=bindparam("merged"), updated_at=bindparam("at"))
)


def _failure(key: str, code: str, message: str, *, retryable: bool = False) -> WriteResult:
    return WriteResult(key, False, error_code=code, error_message=message, retryable=retryable)


def encode_cursor(updated_at: datetime, record_id: int) -> str:
    return (
        f"{updated_at.astimezone(UTC).isoformat(timespec='microseconds')}{_CURSOR_SEP}{record_id}"
    )


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """(updated_at, id) from a cursor; a bare ISO timestamp means "from that instant"."""
    ts, _, rid = cursor.partition(_CURSOR_SEP)
    try:
        when = datetime.fromisoformat(ts)
        record_id = int(rid) if rid else 0
    except ValueError:
        raise ConnectorError(f"invalid cursor {cursor!r}", code="INVALID_CURSOR") from None
    if when.tzinfo is None:
        raise ConnectorError(f"cursor {cursor!r} has no time zone", code="INVALID_CURSOR")
    # Inclusive start for a bare timestamp: id 0 sorts before every record at that instant.
    return when.astimezone(UTC), record_id


def _to_crm(mapping: Mapping | None, props: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Standard names → CRM property names; returns (properties, ignored standard names)."""
    if mapping is None:
        return {name: _json_value(value) for name, value in props.items()}, []
    out: dict[str, Any] = dict(mapping.constant_properties)
    ignored: list[str] = []
    for name, value in props.items():
        fm = mapping.by_field(name)
        if fm is None or not fm.writes_to_crm:
            ignored.append(name)
            continue
        try:
            encoded = _encode(fm.type, value)
        except (TypeError, ValueError) as exc:
            raise InvalidValue(f"{name}: {exc}") from None
        # Too long for the property: cut with a marker rather than lose the record.
        out[fm.crm_property] = (
            fit_text(encoded, fm.max_length) if isinstance(encoded, str) else encoded
        )
    return out, sorted(ignored)


def _from_crm(mapping: Mapping | None, props: dict[str, Any]) -> dict[str, Any]:
    """CRM property names → standard names, for the fields the CRM may change."""
    if mapping is None:
        return props
    out: dict[str, Any] = {}
    for fm in mapping.fields:
        if fm.reads_from_crm and fm.crm_property in props:
            value = props[fm.crm_property]
            out[fm.field] = (
                datetime.fromisoformat(value)
                if fm.type == "datetime" and isinstance(value, str)
                else value
            )
    return out


def _encode(ftype: str, value: Any) -> Any:
    """A standard value as the local CRM stores it (JSON), checked against its type."""
    if value is None:
        return None
    if ftype in ("string", "enumeration"):
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {type(value).__name__}")
        return str(value)
    if ftype == "integer":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError(f"expected an integer, got {type(value).__name__}")
        return int(value)
    if ftype == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {type(value).__name__}")
        return value
    if ftype == "boolean":
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {type(value).__name__}")
        return value
    if ftype == "datetime":
        when = datetime.fromisoformat(value) if isinstance(value, str) else value
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise ValueError(f"expected an aware datetime, got {value!r}")
        return when.astimezone(UTC).isoformat()
    if ftype == "string_list":
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise TypeError("expected a list of strings")
        return sorted(set(value))
    raise ValueError(f"unsupported type {ftype!r}")


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value)
    return value


__all__ = ["InvalidValue", "LocalConnector", "PropertyDef", "decode_cursor", "encode_cursor"]
