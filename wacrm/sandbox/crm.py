"""A CRM simulator with HubSpot's shapes and limits, in memory.

What it reproduces, because the sync engine's behaviour depends on it:

- ``POST /crm/v3/objects/{object}/batch/upsert`` with ``{"inputs": [{"id", "idProperty",
  "properties"}]}``, at most ``max_batch`` inputs (else 400), answered 200, or 207 with an
  ``errors`` list when some inputs were invalid (an enumeration value not among its options).
- ``POST /crm/v3/objects/{object}/search`` on ``hs_lastmodifieddate`` (GTE/LTE), sorted
  ascending, ``limit`` ≤ 200, paged with ``after``, at most 10,000 results per query.
- A rolling-window rate limit (HubSpot: 110 requests per 10 s) answered 429 with HubSpot's
  body, and ``X-HubSpot-RateLimit-*`` headers on every answer.
- Injectable faults, drawn from a seeded RNG: 429, 500, 503, timeouts and connection resets;
  a timeout or reset may happen *after* the write was applied, as it does in real life.
- Change events (``contact.propertyChange``) for every change, ours included, delivered to
  subscribers (the ASGI app POSTs them to a webhook URL, signed as HubSpot signs them,
  ``X-HubSpot-Signature-v3``, when given the app's client secret: :func:`sign_v3`).

The HTTP side is in :mod:`wacrm.sandbox.crm_app` (uvicorn) and :mod:`wacrm.sandbox.crm_transport`
(an in-process httpx transport for tests). Counters answer "how many calls, how many records,
how many writes per key".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ID_PROPERTY = "wacrm_key"
MODIFIED = "hs_lastmodifieddate"
SEARCH_CAP = 10_000
FAULT_KINDS = ("429", "500", "503", "timeout", "reset")
# Enumeration properties and their options: an unknown value is a per-record error (207).
ENUMERATIONS = {"priority": frozenset({"", "high", "medium", "low"})}
# A text property takes at most this many characters through the CRM
# (knowledge.hubspot.com/contacts/property-field-types-in-hubspot); a longer value is a
# per-record error here (HubSpot's exact error for it is unverified).
MAX_TEXT = 65_536

RATE_LIMIT_BODY = {
    "status": "error",
    "message": "You have reached your ten_secondly_rolling limit.",
    "errorType": "RATE_LIMIT",
    "correlationId": "",
    "policyName": "TEN_SECONDLY_ROLLING",
}

_PATH = re.compile(r"^/crm/v3/objects/(?P<object>[a-z_]+)/(?P<op>batch/upsert|search)$")
# What HubSpot decodes in the URI before it signs it (docs: "Validating requests", v3).
_SIGNED_DECODED = frozenset(":/?@!$'()*,;")


def sign_v3(client_secret: str, method: str, url: str, body: bytes, timestamp_ms: int) -> str:
    """``X-HubSpot-Signature-v3`` of a request, as HubSpot computes it: base64 of
    HMAC-SHA256(client secret, method + URI + body + timestamp)."""
    uri = re.sub(
        r"%[0-9A-Fa-f]{2}",
        lambda m: ch if (ch := chr(int(m.group(0)[1:], 16))) in _SIGNED_DECODED else m.group(0),
        url,
    )
    source = f"{method}{uri}".encode() + body + str(timestamp_ms).encode()
    return base64.b64encode(
        hmac.new(client_secret.encode(), source, hashlib.sha256).digest()
    ).decode()


@dataclass
class Faults:
    """Fault injection: ``rate`` is the share of requests that fail, spread over ``kinds``."""

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    applied_share: float = 0.5  # of timeouts and resets, how many happen after the write
    timeout_delay: float = 2.0  # how long a "timeout" holds the answer (> the client's timeout)


@dataclass
class SimConfig:
    max_batch: int = 100
    rate_limit: int = 110
    window: float = 10.0
    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    latency: float = 0.0  # added to every answer, to make runs last (crash tests)
    portal_id: int = 62515
    app_id: int = 1160452
    # The app's client secret; when set, change webhooks carry X-HubSpot-Signature-v3.
    client_secret: str = field(default="", repr=False)


@dataclass
class SimRecord:
    id: str
    object: str
    properties: dict[str, Any]
    created_at: int  # epoch ms
    updated_at: int


@dataclass
class SimResponse:
    """What the HTTP side should do: answer ``status``/``body``, or fail with ``fault``."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    fault: str | None = None  # "timeout" | "reset": no (complete) answer reaches the client
    delay: float = 0.0


ChangeListener = Callable[[list[dict[str, Any]]], None]


class CrmSimulator:
    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        epoch_ms: Callable[[], int] | None = None,
    ) -> None:
        self.config = config or SimConfig()
        self._clock = clock
        self._epoch_ms = epoch_ms or (lambda: int(time.time() * 1000))
        self._rng = random.Random(self.config.seed)
        self._lock = threading.RLock()
        self._listeners: list[ChangeListener] = []
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._records: dict[str, dict[str, SimRecord]] = {}  # object → id → record
            self._by_key: dict[str, dict[str, str]] = {}  # object → wacrm_key → id
            self._window: deque[float] = deque()
            self._next_id = 1000
            self._next_event = 1
            self._last_ms = 0
            self.calls: Counter[str] = Counter()  # "upsert", "search", "429", "fault:reset"…
            self.writes: Counter[tuple[str, str]] = Counter()  # (object, key) → applied writes
            self.creates: Counter[tuple[str, str]] = Counter()  # (object, key) → records made

    def subscribe(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    # -- the API --------------------------------------------------------------------------

    def handle(self, method: str, path: str, body: Any) -> SimResponse:
        match = _PATH.match(path)
        if method != "POST" or match is None:
            return SimResponse(
                404, {"status": "error", "message": "Not found", "category": "OBJECT_NOT_FOUND"}
            )
        with self._lock:
            self.calls["total"] += 1
            now = self._clock()
            window = self.config.window
            while self._window and self._window[0] <= now - window:
                self._window.popleft()
            if len(self._window) >= self.config.rate_limit:
                self.calls["429"] += 1
                return SimResponse(429, dict(RATE_LIMIT_BODY), self._limit_headers(0))
            self._window.append(now)
            remaining = self.config.rate_limit - len(self._window)
            fault = self._draw_fault()
            if fault in ("429", "500", "503"):
                self.calls[f"fault:{fault}"] += 1
                self.calls[fault] += 1
                return self._fault_response(fault, remaining)
            obj, op = match["object"], match["op"]
            self.calls[op.replace("batch/", "")] += 1
            if fault is not None and self._rng.random() >= self.config.faults.applied_share:
                # The request is lost before it did anything.
                self.calls[f"fault:{fault}"] += 1
                return SimResponse(0, None, fault=fault, delay=self._fault_delay(fault))
            if op == "batch/upsert":
                response = self._batch_upsert(obj, body, source="INTEGRATION")
            else:
                response = self._search(obj, body)
            response.headers.update(self._limit_headers(remaining))
            response.delay = self.config.latency
            if fault is not None:  # applied, but the answer never arrives
                self.calls[f"fault:{fault}"] += 1
                self.calls[f"fault:{fault}:applied"] += 1
                return SimResponse(0, None, fault=fault, delay=self._fault_delay(fault))
            self.calls[str(response.status)] += 1
            return response

    def _draw_fault(self) -> str | None:
        faults = self.config.faults
        if faults.rate <= 0 or self._rng.random() >= faults.rate:
            return None
        return self._rng.choice(faults.kinds)

    def _fault_delay(self, fault: str) -> float:
        return self.config.faults.timeout_delay if fault == "timeout" else self.config.latency

    def _fault_response(self, fault: str, remaining: int) -> SimResponse:
        if fault == "429":
            return SimResponse(429, dict(RATE_LIMIT_BODY), self._limit_headers(0))
        body = {
            "status": "error",
            "message": "internal error" if fault == "500" else "Service Unavailable",
            "correlationId": f"sim-{self._next_event}",
            "category": "INTERNAL_ERROR" if fault == "500" else "SERVICE_UNAVAILABLE",
        }
        return SimResponse(int(fault), body, self._limit_headers(remaining))

    def _limit_headers(self, remaining: int) -> dict[str, str]:
        return {
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(self.config.window * 1000)),
            "X-HubSpot-RateLimit-Max": str(self.config.rate_limit),
            "X-HubSpot-RateLimit-Remaining": str(max(0, remaining)),
        }

    def _batch_upsert(self, obj: str, body: Any, *, source: str) -> SimResponse:
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list):
            return _validation_error("Invalid input JSON: 'inputs' is required")
        if len(inputs) > self.config.max_batch:
            return _validation_error(f"Batch input limit is {self.config.max_batch}")
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for item in inputs:
            key = str(item.get("id", "")) if isinstance(item, dict) else ""
            props = item.get("properties") if isinstance(item, dict) else None
            if not key or item.get("idProperty") != ID_PROPERTY or not isinstance(props, dict):
                errors.append(
                    _record_error(
                        key, "INVALID_INPUT", "id, idProperty and properties are required"
                    )
                )
                continue
            long = _too_long(props)
            if long is not None:
                errors.append(_record_error(key, "VALUE_TOO_LONG", long))
                continue
            bad = _invalid_property(props)
            if bad is not None:
                errors.append(_record_error(key, "INVALID_OPTION", bad))
                continue
            record, new, changed = self._upsert(obj, key, props)
            self.writes[(obj, key)] += 1
            events.extend(self._events(record, changed, new, source))
            results.append(_render(record) | {"new": new})
        self._emit(events)
        body_out: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": _iso(self._epoch_ms()),
            "completedAt": _iso(self._epoch_ms()),
        }
        if errors:
            body_out["numErrors"] = len(errors)
            body_out["errors"] = errors
            return SimResponse(207, body_out)
        return SimResponse(200, body_out)

    def _upsert(
        self, obj: str, key: str, props: dict[str, Any]
    ) -> tuple[SimRecord, bool, dict[str, Any]]:
        now = self._tick()
        ids = self._by_key.setdefault(obj, {})
        records = self._records.setdefault(obj, {})
        record_id = ids.get(key)
        if record_id is None:
            record_id = str(self._next_id)
            self._next_id += 1
            record = SimRecord(record_id, obj, {ID_PROPERTY: key}, now, now)
            records[record_id] = record
            ids[key] = record_id
            self.creates[(obj, key)] += 1
            new = True
        else:
            record = records[record_id]
            new = False
        changed = {k: v for k, v in props.items() if record.properties.get(k) != v}
        record.properties.update(props)
        if changed or new:
            record.updated_at = now
        return record, new, changed

    def _search(self, obj: str, body: Any) -> SimResponse:
        body = body if isinstance(body, dict) else {}
        limit = int(body.get("limit") or 10)
        after = int(body.get("after") or 0)
        if limit > 200:
            return _validation_error("limit must be at most 200")
        if after + limit > SEARCH_CAP:
            return _validation_error(
                f"Search results are capped at {SEARCH_CAP}; narrow the filter"
            )
        low, high = _modified_bounds(body.get("filterGroups") or [])
        found = sorted(
            (r for r in self._records.get(obj, {}).values() if low <= r.updated_at <= high),
            key=lambda r: (r.updated_at, int(r.id)),
        )
        page = found[after : after + limit]
        out: dict[str, Any] = {"total": len(found), "results": [_render(r) for r in page]}
        if after + limit < len(found):
            out["paging"] = {"next": {"after": str(after + limit)}}
        return SimResponse(200, out)

    def _tick(self) -> int:
        """Epoch ms that never go backwards. Records written in the same millisecond share a
        modification time, as in a real CRM: the boundary case of ``>=`` cursors."""
        now = max(self._epoch_ms(), self._last_ms)
        self._last_ms = now
        return now

    # -- change events --------------------------------------------------------------------

    def _events(
        self, record: SimRecord, changed: dict[str, Any], new: bool, source: str
    ) -> list[dict[str, Any]]:
        singular = record.object.rstrip("s")
        base = {
            "portalId": self.config.portal_id,
            "appId": self.config.app_id,
            "occurredAt": record.updated_at,
            "attemptNumber": 0,
            "objectId": int(record.id),
            "changeSource": source,
            "sourceId": str(self.config.app_id) if source == "INTEGRATION" else "userId:1",
        }
        events = []
        if new:
            events.append(
                base | {"subscriptionType": f"{singular}.creation", "eventId": self._event_id()}
            )
        for name, value in changed.items():
            events.append(
                base
                | {
                    "subscriptionType": f"{singular}.propertyChange",
                    "eventId": self._event_id(),
                    "propertyName": name,
                    "propertyValue": "" if value is None else str(value),
                }
            )
        return events

    def _event_id(self) -> int:
        self._next_event += 1
        return self._next_event

    def _emit(self, events: list[dict[str, Any]]) -> None:
        if events:
            for listener in list(self._listeners):
                listener(events)

    # -- what a person does in the CRM, and what tests look at ----------------------------

    def edit(self, obj: str, key: str, properties: dict[str, Any]) -> dict[str, Any]:
        """Change a record as a CRM user would (``changeSource: CRM_UI``); creates it if new."""
        with self._lock:
            record, new, changed = self._upsert(obj, key, properties)
            self._emit(self._events(record, changed, new, "CRM_UI"))
            return _render(record)

    def records(self, obj: str) -> list[dict[str, Any]]:
        with self._lock:
            return [_render(r) for r in self._records.get(obj, {}).values()]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": dict(self.calls),
                "records": {obj: len(recs) for obj, recs in self._records.items()},
                "max_writes_per_key": max(self.writes.values(), default=0),
                "max_creates_per_key": max(self.creates.values(), default=0),
                "writes": sum(self.writes.values()),
            }


def _modified_bounds(groups: list[Any]) -> tuple[int, int]:
    low, high = 0, 2**62
    for group in groups:
        for flt in group.get("filters", []) if isinstance(group, dict) else []:
            if flt.get("propertyName") not in (MODIFIED, "lastmodifieddate"):
                continue
            value = int(flt.get("value", 0))
            op = flt.get("operator")
            if op == "GTE":
                low = max(low, value)
            elif op == "GT":
                low = max(low, value + 1)
            elif op == "LTE":
                high = min(high, value)
            elif op == "LT":
                high = min(high, value - 1)
    return low, high


def _too_long(props: dict[str, Any]) -> str | None:
    for name, value in props.items():
        if isinstance(value, str) and len(value) > MAX_TEXT:
            return f"Property {name!r} is {len(value)} characters long; the limit is {MAX_TEXT}"
    return None


def _invalid_property(props: dict[str, Any]) -> str | None:
    for name, options in ENUMERATIONS.items():
        value = props.get(name)
        if value is not None and str(value) not in options:
            return (
                f'Property values were not valid: [{{"isValid":false,"message":"{value} was not '
                f'one of the allowed options","error":"INVALID_OPTION","name":"{name}"}}]'
            )
    return None


def _record_error(key: str, sub: str, message: str) -> dict[str, Any]:
    return {
        "status": "error",
        "category": "VALIDATION_ERROR",
        "subCategory": sub,
        "message": message,
        "context": {"id": [key]},
    }


def _validation_error(message: str) -> SimResponse:
    return SimResponse(400, {"status": "error", "message": message, "category": "VALIDATION_ERROR"})


def _render(record: SimRecord) -> dict[str, Any]:
    props = dict(record.properties)
    props["hs_object_id"] = record.id
    props[MODIFIED] = _iso(record.updated_at)
    props["createdate"] = _iso(record.created_at)
    return {
        "id": record.id,
        "properties": props,
        "createdAt": _iso(record.created_at),
        "updatedAt": _iso(record.updated_at),
        "archived": False,
    }


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
