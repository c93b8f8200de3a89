"""The CRM simulator, the HTTP choke point and the simulator connector, in process."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest

from wacrm.connectors.base import ConnectorError, OutgoingRecord, RateLimit
from wacrm.sandbox.crm import RATE_LIMIT_BODY, CrmSimulator, Faults, SimConfig
from wacrm.sandbox.crm_transport import SimulatorTransport
from wacrm.sync.budget import RateBudget
from wacrm.sync.http import CrmHttp
from wacrm.sync.retry import RetryPolicy
from wacrm.sync.sim_connector import SimulatorConnector

EPOCH_MS = 1_795_597_200_000  # 2026-11-25T09:00:00Z


class SimTime:
    """Monotonic seconds and epoch ms that move only when someone sleeps."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def mono(self) -> float:
        return self.t

    def ms(self) -> int:
        return EPOCH_MS + int(self.t * 1000)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def _sim(time: SimTime, **config: Any) -> CrmSimulator:
    return CrmSimulator(SimConfig(**config), clock=time.mono, epoch_ms=time.ms)


def _connector(sim: CrmSimulator, time: SimTime, **kw: Any) -> SimulatorConnector:
    return SimulatorConnector.connect(
        "http://crm.test",
        transport=SimulatorTransport(sim),
        monotonic=time.mono,
        sleep=time.sleep,
        rng=random.Random(5),
        **kw,
    )


def _upsert(sim: CrmSimulator, keys: list[str], **props: Any) -> Any:
    inputs = [{"id": k, "idProperty": "wacrm_key", "properties": dict(props)} for k in keys]
    return sim.handle("POST", "/crm/v3/objects/contacts/batch/upsert", {"inputs": inputs})


def test_given_more_calls_than_the_rolling_limit_then_429_with_hubspot_body_and_headers() -> None:
    time = SimTime()
    sim = _sim(time, rate_limit=3, window=10.0)
    answers = [_upsert(sim, [f"k{i}"]) for i in range(4)]

    assert [a.status for a in answers] == [200, 200, 200, 429]
    assert answers[3].body == RATE_LIMIT_BODY
    assert answers[3].body["policyName"] == "TEN_SECONDLY_ROLLING"
    assert answers[3].headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert answers[2].headers["X-HubSpot-RateLimit-Max"] == "3"

    time.t += 10.01  # the window rolls on
    assert _upsert(sim, ["k9"]).status == 200


def test_given_a_batch_over_the_maximum_then_400_and_nothing_written() -> None:
    sim = _sim(SimTime(), max_batch=2)

    answer = _upsert(sim, ["a", "b", "c"])

    assert answer.status == 400 and "Batch input limit is 2" in answer.body["message"]
    assert sim.records("contacts") == []


def test_given_the_same_key_twice_then_one_record_and_two_writes() -> None:
    sim = _sim(SimTime())
    _upsert(sim, ["+1555"], firstname="A")
    _upsert(sim, ["+1555"], firstname="B")

    [record] = sim.records("contacts")
    assert record["properties"]["firstname"] == "B"
    assert sim.creates[("contacts", "+1555")] == 1 and sim.writes[("contacts", "+1555")] == 2


def test_given_a_timeout_fault_after_the_write_then_the_write_is_kept_but_unanswered() -> None:
    sim = _sim(SimTime(), faults=Faults(rate=1.0, kinds=("timeout",), applied_share=1.0))

    answer = _upsert(sim, ["+1555"], firstname="A")

    assert answer.fault == "timeout"
    assert len(sim.records("contacts")) == 1


def test_given_an_edit_by_a_crm_user_then_a_change_event_names_the_ui_as_source() -> None:
    sim = _sim(SimTime())
    events: list[dict[str, Any]] = []
    sim.subscribe(events.extend)
    _upsert(sim, ["+1555"], priority="low")
    events.clear()

    sim.edit("contacts", "+1555", {"priority": "high"})

    assert [(e["subscriptionType"], e["propertyName"], e["changeSource"]) for e in events] == [
        ("contact.propertyChange", "priority", "CRM_UI")
    ]


def test_given_records_in_the_same_millisecond_then_search_pages_by_offset_without_loss() -> None:
    time = SimTime()
    sim = _sim(time)
    _upsert(sim, [f"k{i:03d}" for i in range(100)], firstname="x")  # one millisecond
    time.t += 1
    _upsert(sim, [f"m{i:03d}" for i in range(30)], firstname="y")
    crm = _connector(sim, time)

    seen: list[str] = []
    cursor = None
    for _ in range(20):
        page = crm.read_changes("contacts", cursor, None, 40)
        seen.extend(r.key for r in page.records)
        if not page.more:
            break
        cursor = page.next_cursor

    assert set(seen) == {f"k{i:03d}" for i in range(100)} | {f"m{i:03d}" for i in range(30)}


def test_given_a_batch_with_an_invalid_option_then_207_and_per_record_results() -> None:
    time = SimTime()
    sim = _sim(time)
    crm = _connector(sim, time)
    records = [
        OutgoingRecord("+1", {"priority": "high", "unread_count": 1}),
        OutgoingRecord("+2", {"priority": "urgent!"}),
        OutgoingRecord("+3", {"unread_count": 3}),
    ]

    results = crm.write_batch("contacts", records)

    assert [r.key for r in results] == ["+1", "+2", "+3"]
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error_code == "INVALID_OPTION" and not results[1].retryable
    assert "urgent!" in (results[1].error_message or "")
    assert results[0].crm_id and results[0].crm_id != results[2].crm_id
    assert sim.records("contacts")[0]["properties"]["whatsapp_unread_count"] == 1


def _scripted(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[str]]:
    queue = list(answers)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return httpx.MockTransport(handler), seen


def _http(transport: httpx.BaseTransport, time: SimTime, **kw: Any) -> CrmHttp:
    return CrmHttp(
        "http://crm.test",
        transport=transport,
        monotonic=time.mono,
        sleep=time.sleep,
        rng=random.Random(2),
        headers={"Authorization": "Bearer s3cr3t"},
        **kw,
    )


def test_given_429_with_retry_after_then_200_when_requested_then_waits_and_returns() -> None:
    time = SimTime()
    transport, _ = _scripted(
        httpx.Response(429, headers={"Retry-After": "4"}, json=RATE_LIMIT_BODY),
        httpx.Response(200, json={"ok": True}),
    )

    response = _http(transport, time).request("POST", "/x", json={})

    assert response.json() == {"ok": True}
    assert time.sleeps == [4.0]


def test_given_a_reset_then_a_timeout_then_200_when_requested_then_retried_with_backoff() -> None:
    time = SimTime()
    transport, seen = _scripted(
        httpx.RemoteProtocolError("peer closed connection"),
        httpx.ReadTimeout("slow"),
        httpx.Response(200, json={}),
    )

    _http(transport, time, policy=RetryPolicy(base=1.0, cap=8.0)).request("POST", "/x")

    assert len(seen) == 3 and len(time.sleeps) == 2
    assert time.sleeps[0] <= 1.0 and time.sleeps[1] <= 2.0


def test_given_401_when_requested_then_not_retried_and_the_token_is_not_in_the_error() -> None:
    time = SimTime()
    transport, seen = _scripted(httpx.Response(401, json={"message": "expired"}))

    with pytest.raises(ConnectorError) as caught:
        _http(transport, time).request("POST", "/x")

    assert caught.value.code == "UNAUTHORIZED" and not caught.value.retryable
    assert "reconnect the CRM" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)
    assert len(seen) == 1


def test_given_503_forever_when_requested_then_bounded_attempts_and_retryable_error() -> None:
    time = SimTime()
    transport, seen = _scripted(*[httpx.Response(503, json={}) for _ in range(10)])

    with pytest.raises(ConnectorError) as caught:
        _http(transport, time, policy=RetryPolicy(max_attempts=4)).request("POST", "/x")

    assert caught.value.retryable and caught.value.code == "UNAVAILABLE"
    assert len(seen) == 4


def test_given_rate_headers_when_answered_then_the_budget_is_corrected() -> None:
    time = SimTime()
    headers = {
        "X-HubSpot-RateLimit-Max": "190",
        "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
        "X-HubSpot-RateLimit-Remaining": "150",
    }
    transport, _ = _scripted(httpx.Response(200, headers=headers, json={}))
    budget = RateBudget.for_limit(RateLimit(110, 10.0), clock=time.mono, sleep=time.sleep)

    _http(transport, time, budget=budget).request("POST", "/x")

    assert budget.limit == 190
