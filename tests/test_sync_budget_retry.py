"""Retry policy (Retry-After, full jitter, bounds) and the rate budget (token bucket, headers)."""

from __future__ import annotations

import random
from collections import deque
from datetime import UTC, datetime

import pytest

from wacrm.connectors.base import RateLimit
from wacrm.sync.budget import RateBudget
from wacrm.sync.retry import RetryPolicy, parse_retry_after


class Ticker:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "a budget must never busy-wait"
        self.t += seconds


def test_given_retry_after_in_seconds_or_http_date_when_parsed_then_seconds_to_wait() -> None:
    now = datetime(2026, 11, 25, 9, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("Wed, 25 Nov 2026 09:00:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 25 Nov 2026 08:59:00 GMT", now) == 0.0  # past: at once
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_given_retry_after_when_delay_computed_then_it_wins_over_backoff() -> None:
    policy = RetryPolicy(base=1.0, cap=8.0)
    assert policy.delay(3, 12.5, random.Random(1)) == 12.5


def test_given_no_retry_after_then_full_jitter_stays_under_the_growing_ceiling() -> None:
    policy = RetryPolicy(base=0.5, cap=4.0)
    rng = random.Random(3)
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)):
        delays = [policy.backoff(attempt, rng) for _ in range(200)]
        assert max(delays) <= ceiling
        assert max(delays) > ceiling * 0.8  # jitter spreads over the whole range
        assert min(delays) < ceiling * 0.2


def test_given_bounds_then_retries_stop_on_attempts_elapsed_time_or_a_long_retry_after() -> None:
    policy = RetryPolicy(max_attempts=3, max_elapsed=10.0, max_retry_after=5.0)
    assert policy.should_retry(1, elapsed=0.0, next_delay=1.0)
    assert not policy.should_retry(3, elapsed=0.0, next_delay=1.0)
    assert not policy.should_retry(1, elapsed=9.5, next_delay=1.0)
    assert not policy.should_retry(1, elapsed=0.0, next_delay=6.0)


def test_given_hubspot_limits_when_budget_spent_then_no_rolling_window_holds_over_the_limit() -> (
    None
):
    ticker = Ticker()
    budget = RateBudget.for_limit(RateLimit(110, 10.0), clock=ticker, sleep=ticker.sleep)
    stamps: deque[float] = deque()
    worst = 0
    for _ in range(1000):
        budget.acquire()
        stamps.append(ticker.t)
        while stamps[0] <= ticker.t - 10.0:
            stamps.popleft()
        worst = max(worst, len(stamps))

    assert worst <= 110
    assert 1000 / ticker.t >= 0.95 * 11.0  # the pace stays within 5 % of the limit


def test_given_remaining_header_lower_than_tokens_then_budget_trusts_the_server() -> None:
    ticker = Ticker()
    budget = RateBudget(100, 10.0, burst=20, clock=ticker, sleep=ticker.sleep)
    assert budget.tokens == pytest.approx(20)

    budget.observe(remaining=2)

    assert budget.tokens == pytest.approx(2)


def test_given_headers_announcing_a_higher_tier_then_budget_speeds_up() -> None:
    ticker = Ticker()
    budget = RateBudget(110, 10.0, clock=ticker, sleep=ticker.sleep)
    slow = budget.rate

    budget.observe(remaining=180, limit=190, window=10.0)

    assert budget.limit == 190 and budget.rate > slow * 1.6


def test_given_a_429_with_retry_after_then_the_next_token_waits_that_long() -> None:
    ticker = Ticker()
    budget = RateBudget(110, 10.0, clock=ticker, sleep=ticker.sleep)

    budget.throttled(retry_after=3.0)
    waited = budget.acquire()

    assert waited == pytest.approx(3.0, abs=1e-3)
