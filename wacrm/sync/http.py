"""The one HTTP choke point for a CRM connector: timeouts, the rate budget, bounded retries.

Every request takes a token from the account's :class:`RateBudget` first, and every response
feeds the budget from its rate-limit headers. Failures are classified by one table (Airbyte
style): what to do, under which code, with a hint a human can act on. Retryable failures are
retried with Retry-After first, else exponential backoff with full jitter, bounded by attempts
and elapsed time; past the bound a :class:`ConnectorError` (``retryable=True``) hands the
records back to the outbox, which reschedules them.

Headers given to the client (``Authorization``) are never logged nor put in error text.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import httpx

from wacrm.connectors.base import ConnectorError
from wacrm.sync.budget import RateBudget
from wacrm.sync.retry import CALL_POLICY, RetryPolicy, parse_retry_after

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ErrorRule:
    retry: bool
    code: str
    hint: str


# HTTP status → what to do. Anything not listed and < 400 is success; other 4xx go back to the
# connector, which reads per-record errors from the body.
ERROR_TABLE: Mapping[int, ErrorRule] = MappingProxyType(
    {
        401: ErrorRule(False, "UNAUTHORIZED", "the access token was refused: reconnect the CRM"),
        403: ErrorRule(False, "FORBIDDEN", "the app lacks a scope or permission for this call"),
        408: ErrorRule(True, "REQUEST_TIMEOUT", "the CRM timed out; retrying"),
        429: ErrorRule(True, "RATE_LIMITED", "the CRM's rate limit was reached; slowing down"),
        500: ErrorRule(True, "SERVER_ERROR", "the CRM failed; retrying"),
        502: ErrorRule(True, "BAD_GATEWAY", "the CRM's gateway failed; retrying"),
        503: ErrorRule(True, "UNAVAILABLE", "the CRM is unavailable; retrying"),
        504: ErrorRule(True, "GATEWAY_TIMEOUT", "the CRM's gateway timed out; retrying"),
    }
)

BudgetHeaders = Callable[[httpx.Headers], tuple[int | None, int | None, float | None]]


def hubspot_budget_headers(headers: httpx.Headers) -> tuple[int | None, int | None, float | None]:
    """``(remaining, max, window seconds)`` from ``X-HubSpot-RateLimit-*``."""
    remaining = _int(headers.get("x-hubspot-ratelimit-remaining"))
    limit = _int(headers.get("x-hubspot-ratelimit-max"))
    interval = _int(headers.get("x-hubspot-ratelimit-interval-milliseconds"))
    return remaining, limit, (interval / 1000.0 if interval else None)


class CrmHttp:
    """A synchronous httpx client with the budget and retry policy wrapped around it."""

    def __init__(
        self,
        base_url: str,
        *,
        budget: RateBudget | None = None,
        policy: RetryPolicy = CALL_POLICY,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        budget_headers: BudgetHeaders = hubspot_budget_headers,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wallclock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
    ) -> None:
        self._client = httpx.Client(
            base_url=base_url, headers=dict(headers or {}), timeout=timeout, transport=transport
        )
        self.budget = budget
        self._policy = policy
        self._budget_headers = budget_headers
        self._monotonic = monotonic
        self._sleep = sleep
        self._wallclock = wallclock
        self._rng = rng or random.Random()
        self.statuses: Counter[str] = Counter()  # "200", "429", "TIMEOUT"… for reports
        self.requests = 0

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, *, json: Any = None) -> httpx.Response:
        """Send, retrying what the error table says is retryable; return the final response.

        Raises :class:`ConnectorError` for a refusal (401/403: not retryable) or when the
        retry bound is reached (retryable: the caller reschedules).
        """
        start = self._monotonic()
        attempt = 0
        while True:
            attempt += 1
            if self.budget is not None:
                self.budget.acquire()
            self.requests += 1
            retry_after: float | None = None
            try:
                response = self._client.request(method, path, json=json)
            except httpx.TimeoutException as exc:
                self.statuses["TIMEOUT"] += 1
                code, detail = "TIMEOUT", f"no answer in time ({type(exc).__name__})"
            except httpx.TransportError as exc:  # reset, refused, truncated response
                self.statuses["CONNECTION"] += 1
                code, detail = "CONNECTION", f"connection failed ({type(exc).__name__})"
            else:
                self.statuses[str(response.status_code)] += 1
                self._feed_budget(response)
                rule = ERROR_TABLE.get(response.status_code)
                if rule is None:
                    return response
                detail = f"HTTP {response.status_code}: {_message(response)}; {rule.hint}"
                if not rule.retry:
                    raise ConnectorError(f"{method} {path}: {detail}", code=rule.code)
                code = rule.code
                retry_after = parse_retry_after(
                    response.headers.get("retry-after"), self._wallclock()
                )
                if response.status_code == 429 and self.budget is not None:
                    self.budget.throttled(retry_after)
            delay = self._policy.delay(attempt, retry_after, self._rng)
            elapsed = self._monotonic() - start
            if not self._policy.should_retry(attempt, elapsed, delay):
                raise ConnectorError(
                    f"{method} {path}: {detail} (gave up after {attempt} attempts)",
                    code=code,
                    retryable=True,
                    retry_after=retry_after,
                )
            logger.debug("%s %s: %s; retry %d in %.2f s", method, path, code, attempt, delay)
            self._sleep(delay)

    def _feed_budget(self, response: httpx.Response) -> None:
        if self.budget is None:
            return
        remaining, limit, window = self._budget_headers(response.headers)
        if remaining is not None or limit is not None:
            self.budget.observe(remaining=remaining, limit=limit, window=window)


def _message(response: httpx.Response) -> str:
    """The CRM's own error message, clipped; never the request (it may carry secrets)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:200]
    return str(body)[:200]


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
