"""A connector for the HubSpot-like CRM simulator (:mod:`wacrm.sandbox.crm`).

It is shaped like a real connector (one class, limits as class attributes, one HTTP choke
point) so the sync engine is proven against HTTP, rate limits and faults before a real CRM's
connector exists; a HubSpot connector differs mainly in its mapping and authentication.
Writes are batch upserts keyed by the ``wacrm_key`` property (idempotent by construction).

Contacts use the embedded CRM's mapping; message activities use HubSpot's
(``mappings/hubspot_messages.yaml``): they go to ``/crm/v3/objects/communications`` with
HubSpot's property names, so the simulator holds what HubSpot would.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import httpx

from wacrm.connectors.base import (
    ChangePage,
    CheckResult,
    ConnectorError,
    IncomingRecord,
    OutgoingRecord,
    RateLimit,
    fit_text,
)
from wacrm.mappings import Mapping, load_mapping
from wacrm.model import WriteResult
from wacrm.sync.budget import RateBudget
from wacrm.sync.http import CrmHttp
from wacrm.sync.retry import CALL_POLICY, RetryPolicy

ID_PROPERTY = "wacrm_key"
CONTACT_KEY_PROPERTY = "wacrm_contact_key"
MODIFIED = "hs_lastmodifieddate"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SimulatorConnector:
    name: ClassVar[str] = "simulator"
    max_batch: ClassVar[int] = 100
    rate_limit: ClassVar[RateLimit] = RateLimit(110, 10.0)
    # Field names and ownership: the embedded CRM's mapping file (it has no file of its own).
    mapping_name: ClassVar[str] = "local"

    def __init__(self, http: CrmHttp, *, mappings: dict[str, Mapping] | None = None) -> None:
        self.http = http
        self._mappings = mappings if mappings is not None else _default_mappings()

    @classmethod
    def connect(
        cls,
        base_url: str,
        *,
        max_batch: int = 100,
        rate_limit: RateLimit | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        policy: RetryPolicy = CALL_POLICY,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> SimulatorConnector:
        """A connector whose declared limits match the simulator's configuration."""
        limit = rate_limit or cls.rate_limit
        kind = cls
        if (max_batch, limit) != (cls.max_batch, cls.rate_limit):
            # Limits are class attributes in the protocol; a configured simulator gets its own.
            kind = type(cls.__name__, (cls,), {"max_batch": max_batch, "rate_limit": limit})
        budget = RateBudget.for_limit(limit, clock=monotonic, sleep=sleep)
        http = CrmHttp(
            base_url,
            budget=budget,
            policy=policy,
            timeout=timeout,
            transport=transport,
            monotonic=monotonic,
            sleep=sleep,
            rng=rng,
        )
        return kind(http)

    def check(self) -> CheckResult:
        try:
            self.http.request("POST", "/crm/v3/objects/contacts/search", json={"limit": 1})
        except ConnectorError as exc:
            return CheckResult(ok=False, detail=str(exc))
        return CheckResult(ok=True, detail="simulator reachable")

    # -- writing ------------------------------------------------------------------------------

    def write_batch(self, object: str, records: Sequence[OutgoingRecord]) -> list[WriteResult]:
        if len(records) > self.max_batch:
            raise ValueError(f"{len(records)} records exceed the batch maximum {self.max_batch}")
        inputs = [
            {"id": r.key, "idProperty": ID_PROPERTY, "properties": self._outgoing(object, r)}
            for r in records
        ]
        response = self.http.request(
            "POST",
            f"/crm/v3/objects/{self._crm_object(object)}/batch/upsert",
            json={"inputs": inputs},
        )
        body = _json(response)
        if response.status_code not in (200, 201, 207):
            raise ConnectorError(
                f"batch upsert of {object} refused: HTTP {response.status_code}: "
                f"{str(body.get('message', ''))[:200]}",
                code=str(body.get("category") or response.status_code),
            )
        done: dict[str, WriteResult] = {}
        for item in body.get("results") or []:
            key = str((item.get("properties") or {}).get(ID_PROPERTY, ""))
            done[key] = WriteResult(key=key, ok=True, crm_id=str(item.get("id")))
        for error in body.get("errors") or []:
            code = str(error.get("subCategory") or error.get("category") or "ERROR")
            for key in (error.get("context") or {}).get("id") or []:
                done[str(key)] = WriteResult(
                    key=str(key),
                    ok=False,
                    error_code=code,
                    error_message=str(error.get("message", ""))[:1000],
                    retryable=False,
                )
        # HubSpot does not promise result order: match by key, and never assume success.
        return [
            done.get(r.key)
            or WriteResult(
                key=r.key,
                ok=False,
                error_code="NO_RESULT",
                error_message="the CRM returned no result for this record",
                retryable=True,
            )
            for r in records
        ]

    def _crm_object(self, object: str) -> str:
        """What the CRM calls ``object`` (``messages`` → ``communications``)."""
        mapping = self._mappings.get(object)
        return object if mapping is None else mapping.crm_name

    def _outgoing(self, object: str, record: OutgoingRecord) -> dict[str, Any]:
        mapping = self._mappings.get(object)
        props: dict[str, Any] = {} if mapping is None else dict(mapping.constant_properties)
        for name, value in record.properties.items():
            if mapping is None:
                props[name] = _crm_value(value)
                continue
            field = mapping.by_field(name)
            if field is not None and field.writes_to_crm:
                value = _crm_value(value)
                # Too long for the property: cut with a marker rather than have it refused.
                props[field.crm_property] = (
                    fit_text(value, field.max_length) if isinstance(value, str) else value
                )
        if record.contact_key is not None:
            props[CONTACT_KEY_PROPERTY] = record.contact_key
        return props

    # -- reading ------------------------------------------------------------------------------

    def read_changes(
        self, object: str, cursor: str | None, signpost: datetime | None, limit: int
    ) -> ChangePage:
        """Search ``hs_lastmodifieddate >= cursor`` (and ``<= signpost``), oldest first.

        ``cursor`` is an ISO timestamp, or our own ``<ms>|<offset>`` token; ``next_cursor`` is
        set whenever the page has records (store it), ``more`` says whether to read again.
        """
        low, after = _parse_cursor(cursor)
        limit = max(1, min(limit, 200))
        filters = [{"propertyName": MODIFIED, "operator": "GTE", "value": str(low)}]
        if signpost is not None:
            filters.append(
                {"propertyName": MODIFIED, "operator": "LTE", "value": str(_ms(signpost))}
            )
        request = {
            "filterGroups": [{"filters": filters}],
            "sorts": [{"propertyName": MODIFIED, "direction": "ASCENDING"}],
            "limit": limit,
            "after": str(after),
        }
        path = f"/crm/v3/objects/{self._crm_object(object)}/search"
        response = self.http.request("POST", path, json=request)
        body = _json(response)
        if response.status_code != 200:
            raise ConnectorError(
                f"search of {object} refused: HTTP {response.status_code}: "
                f"{str(body.get('message', ''))[:200]}",
                code=str(body.get("category") or response.status_code),
            )
        records = [self._incoming(object, item) for item in body.get("results") or []]
        more = ((body.get("paging") or {}).get("next") or {}).get("after") is not None
        if not records:
            return ChangePage(records=[], next_cursor=None, more=False)
        last = _ms(records[-1].modified_at)
        if last > low or not more:
            # Continue (or next run) from the last time seen, inclusive: the records sharing
            # that millisecond come again and the engine recognises them. Offsets are not
            # stored: a record modified meanwhile moves to the end and shifts every offset.
            return ChangePage(records, f"{last}|0", more=more)
        # A whole page within one millisecond: only an offset makes progress.
        return ChangePage(records, f"{low}|{after + len(records)}", more=True)

    def _incoming(self, object: str, item: dict[str, Any]) -> IncomingRecord:
        raw = dict(item.get("properties") or {})
        mapping = self._mappings.get(object)
        props: dict[str, Any] = {}
        if mapping is None:
            props = {
                k: v for k, v in raw.items() if k not in (MODIFIED, "hs_object_id", "createdate")
            }
        else:
            for field in mapping.fields:
                if field.crm_property in raw:
                    props[field.field] = _standard_value(field.type, raw[field.crm_property])
        crm_id = str(item.get("id"))
        key = raw.get(ID_PROPERTY) or props.get("phone") or f"crm:{crm_id}"
        modified = _parse_time(str(item.get("updatedAt") or raw.get(MODIFIED)))
        return IncomingRecord(key=str(key), crm_id=crm_id, properties=props, modified_at=modified)


def _default_mappings() -> dict[str, Mapping]:
    return {
        "contacts": load_mapping("local", "contacts"),
        "messages": load_mapping("hubspot", "messages"),
    }


def _crm_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | tuple | set | frozenset):
        return ";".join(sorted(str(v) for v in value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _standard_value(kind: str, value: Any) -> Any:
    if value is None or value == "":
        return [] if kind == "string_list" else None
    if kind == "string_list":
        return sorted({part for part in str(value).split(";") if part})
    if kind == "integer":
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    return value


def _parse_cursor(cursor: str | None) -> tuple[int, int]:
    if not cursor:
        return 0, 0
    if "|" in cursor:
        low, after = cursor.split("|", 1)
        return int(low), int(after)
    return _ms(_parse_time(cursor)), 0


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _ms(when: datetime) -> int:
    # Integer arithmetic: float timestamps turn ...123 ms into ...122.99999 and lose a record.
    return (when - _EPOCH) // timedelta(milliseconds=1)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"message": response.text[:200]}
    return body if isinstance(body, dict) else {"message": str(body)[:200]}
