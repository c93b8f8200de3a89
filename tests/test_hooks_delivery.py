"""Delivery: what each answer of the target means, retries on a simulated clock, the lease."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import timedelta

import httpx
import orjson
import pytest
from hooks_support import (
    BOX,
    Clock,
    FakeDns,
    add_contact,
    deliveries,
    emit,
    subscription_row,
)
from sqlalchemy import Engine

from wacrm.hooks.delivery import claim, post, record
from wacrm.hooks.fanout import fan_out
from wacrm.hooks.subscriptions import subscribe
from wacrm.hooks.worker import HookDeliveryWorker

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    """No test here asks real DNS: every name resolves to a public address."""
    return FakeDns().install(monkeypatch)


class Target:
    """A scripted target (httpx.MockTransport): answers in turn; fails the test if a request
    comes that was not expected."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert self.answers, "a request the test did not expect"
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_worker(engine: Engine, clock: Clock) -> Iterator[Callable[[Target], HookDeliveryWorker]]:
    made: list[HookDeliveryWorker] = []

    def make(target: Target) -> HookDeliveryWorker:
        client = httpx.Client(transport=httpx.MockTransport(target))
        # rng: jitter at its maximum, so backoff delays are known.
        worker = HookDeliveryWorker(engine, client, box=BOX, clock=clock, rng=_MaxJitter())
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.close()


class _MaxJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


def one_event(engine: Engine, account_id: int, url: str = "https://crm-hooks.example/h") -> int:
    sub = subscribe(
        engine, account_id, "order.status_changed", url, Clock()(), box=BOX
    ).subscription
    contact = add_contact(engine, account_id)
    emit(engine, account_id, contact_id=contact, data={"new_value": "shipped"})
    return sub.id


def test_given_500_then_200_when_delivered_then_retried_after_backoff_and_delivered(
    engine: Engine, account_id: int, clock: Clock, make_worker: Callable[..., HookDeliveryWorker]
) -> None:
    one_event(engine, account_id)
    target = Target(httpx.Response(500, text="boom"), httpx.Response(204))
    worker = make_worker(target)

    assert worker.run_once() == 1
    [row] = deliveries(engine)
    assert (row.state, row.attempts, row.last_status, row.last_error) == (
        "pending",
        1,
        500,
        "HTTP 500: boom",
    )
    assert row.next_attempt_at == clock.now + timedelta(seconds=30)  # base 30 s, full jitter
    clock.advance(seconds=29)
    assert worker.run_once() == 0  # not due yet
    clock.advance(seconds=1)
    assert worker.run_once() == 1

    [row] = deliveries(engine)
    assert (row.state, row.attempts, row.last_status, row.last_error) == ("delivered", 2, 204, None)
    assert row.delivered_at == clock.now
    assert len(target.requests) == 2
    assert worker.run_once() == 0


def test_given_429_with_retry_after_when_delivered_then_next_attempt_after_it(
    engine: Engine, account_id: int, clock: Clock, make_worker: Callable[..., HookDeliveryWorker]
) -> None:
    one_event(engine, account_id)
    worker = make_worker(Target(httpx.Response(429, headers={"Retry-After": "120"})))

    worker.run_once()

    [row] = deliveries(engine)
    assert (row.state, row.last_status) == ("pending", 429)
    assert row.next_attempt_at == clock.now + timedelta(seconds=120)


def test_given_410_gone_when_delivered_then_subscription_disabled_and_its_pending_dead(
    engine: Engine, account_id: int, clock: Clock, make_worker: Callable[..., HookDeliveryWorker]
) -> None:
    sub_id = one_event(engine, account_id)
    worker = make_worker(Target(httpx.Response(410)))
    worker._per_target = 1  # one at a time: the second event is still pending at the 410
    emit(engine, account_id)

    assert worker.run_once() == 1

    first, second = deliveries(engine)
    assert (first.state, first.last_status) == ("dead", 410)
    assert (second.state, second.attempts) == ("dead", 0)
    assert second.last_error == "subscription disabled: the target answered 410 Gone"
    sub = subscription_row(engine, sub_id)
    assert (sub.state, sub.disabled_reason) == ("disabled", "the target answered 410 Gone")
    emit(engine, account_id)
    assert worker.run_once() == 0  # Target fails the test on any further request
    assert len(deliveries(engine)) == 2


def test_given_timeout_when_delivered_then_retried_and_url_kept_out_of_the_error(
    engine: Engine, account_id: int, clock: Clock, make_worker: Callable[..., HookDeliveryWorker]
) -> None:
    url = "https://hooks.example/catch/12345/s3cr3tpath/"
    one_event(engine, account_id, url)
    target = Target(httpx.ReadTimeout("timed out"), httpx.ConnectError("refused"))
    worker = make_worker(target)

    worker.run_once()
    [row] = deliveries(engine)
    assert (row.state, row.last_status, row.last_error) == (
        "pending",
        None,
        "timed out (ReadTimeout)",
    )
    clock.advance(seconds=30)
    worker.run_once()

    [row] = deliveries(engine)
    assert (row.state, row.attempts) == ("pending", 2)
    assert row.last_error == "connection failed (ConnectError)"
    assert row.next_attempt_at == clock.now + timedelta(seconds=60)
    assert "s3cr3tpath" not in (row.last_error or "")


def test_given_target_failing_every_time_when_10_attempts_spent_then_dead_with_last_status(
    engine: Engine, account_id: int, clock: Clock, make_worker: Callable[..., HookDeliveryWorker]
) -> None:
    one_event(engine, account_id)
    target = Target(*[httpx.Response(503, text="down") for _ in range(10)])
    worker = make_worker(target)
    worker._policy = type(worker._policy)(
        max_attempts=10, max_elapsed=1e9, base=1.0, cap=1.0, max_retry_after=1e9
    )

    for _ in range(10):
        assert worker.run_once() == 1
        clock.advance(seconds=1)

    [row] = deliveries(engine)
    assert (row.state, row.attempts, row.last_status) == ("dead", 10, 503)
    assert row.last_error == "gave up after 10 attempt(s) in 9 s: HTTP 503: down"
    clock.advance(days=1)
    assert worker.run_once() == 0


def test_given_24_hours_passed_when_attempt_fails_then_dead_however_few_attempts(
    engine: Engine, account_id: int, clock: Clock, make_worker: Callable[..., HookDeliveryWorker]
) -> None:
    one_event(engine, account_id)
    worker = make_worker(Target(httpx.Response(502), httpx.Response(502)))
    worker.run_once()
    clock.advance(hours=24)

    worker.run_once()

    [row] = deliveries(engine)
    assert (row.state, row.attempts, row.last_status) == ("dead", 2, 502)
    assert row.last_error == "gave up after 2 attempt(s) in 24.0 h: HTTP 502"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, "HTTP 400: bad payload"),
        (404, "HTTP 404: bad payload"),
        (301, "HTTP 301: redirects are not followed; subscribe the final URL"),
    ],
)
def test_given_other_4xx_or_redirect_when_delivered_then_dead_at_once(
    engine: Engine,
    account_id: int,
    make_worker: Callable[..., HookDeliveryWorker],
    status: int,
    error: str,
) -> None:
    sub_id = one_event(engine, account_id)
    worker = make_worker(Target(httpx.Response(status, text="bad payload")))

    worker.run_once()

    [row] = deliveries(engine)
    assert (row.state, row.attempts, row.last_status, row.last_error) == ("dead", 1, status, error)
    assert subscription_row(engine, sub_id).state == "active"


def test_given_crash_mid_post_when_lease_ends_then_sent_once_more_and_old_answer_ignored(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    sub_id = one_event(engine, account_id)
    fan_out(engine, clock.now)
    [leased] = claim(engine, sub_id, clock.now, box=BOX, lease=timedelta(minutes=5), limit=10)
    # ... the process dies here, mid-POST: nothing recorded.

    clock.advance(minutes=4)
    assert claim(engine, sub_id, clock.now, box=BOX, lease=timedelta(minutes=5), limit=10) == []
    clock.advance(minutes=1)
    [again] = claim(engine, sub_id, clock.now, box=BOX, lease=timedelta(minutes=5), limit=10)
    assert (leased.attempts, again.attempts) == (1, 2)
    assert again.body == leased.body

    # The crashed process's answer, had it come late, changes nothing; the new one counts.
    rng = random.Random(0)
    client = httpx.Client(transport=httpx.MockTransport(lambda _r: httpx.Response(200)))
    assert record(engine, leased, post(client, leased, clock.now), clock.now, rng=rng) == "stale"
    assert record(engine, again, post(client, again, clock.now), clock.now, rng=rng) == "delivered"
    [row] = deliveries(engine)
    assert (row.state, row.attempts) == ("delivered", 2)


def test_given_event_when_posted_then_body_and_headers_as_documented(
    engine: Engine, account_id: int, clock: Clock, make_worker: Callable[..., HookDeliveryWorker]
) -> None:
    one_event(engine, account_id)
    target = Target(httpx.Response(200))
    worker = make_worker(target)

    worker.run_once()

    [request] = target.requests
    doc = orjson.loads(request.content)
    [row] = deliveries(engine)
    assert doc == {
        "id": row.event_id,
        "event": "order.status_changed",
        "rule": "test-rule",
        "account": {"id": account_id, "name": "default"},
        "contact": {
            "id": doc["contact"]["id"],
            "phone": "+16315551234",
            "wa_id": "16315551234",
            "name": "Alice",
            "tags": ["vip"],
            "priority": None,
            "language": None,
            "crm_id": None,
        },
        "data": {"new_value": "shipped"},
        "created_at": "2026-11-25T09:00:00+00:00",
    }
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-wacrm-event-id"] == str(row.event_id)
    assert request.headers["x-wacrm-timestamp"] == str(int(clock.now.timestamp()))
    assert request.headers["x-wacrm-signature"].startswith("sha256=")
