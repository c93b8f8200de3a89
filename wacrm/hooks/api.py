"""``/api/hooks``: REST-hook subscriptions for Zapier-style platforms.

- ``POST /api/hooks`` ``{"event": "handover", "target_url": "https://…"}`` → 201
  ``{"id", "event", "target_url", "secret"}``: the secret signs every delivery
  (``X-Wacrm-Signature``, see :mod:`wacrm.hooks.delivery`) and is shown this once only.
- ``GET /api/hooks`` → ``{"hooks": [...]}`` (no secrets).
- ``DELETE /api/hooks/{id}`` → 204, or 404.
- ``GET /api/hooks/{id}/deliveries?state=dead&limit=50`` → ``{"deliveries": [...]}``.

A target must be https and public (not, and not resolving to, a loopback, private,
link-local… address) unless ``WACRM_HOOKS_ALLOW_PRIVATE_TARGETS`` is true; one that is not
answers 422 with the host and why (:mod:`wacrm.hooks.targets`).

Every route wants ``Authorization: Bearer <WACRM_API_TOKEN>`` (compared in constant time).
Fail closed: with no token set, they all answer 503 and do nothing. Subscriptions belong to
the account ``WACRM_ACCOUNT_NAME``. Secrets are stored sealed: with no usable secret key
(``WACRM_SECRET_KEY``), subscribing answers 503 (the reason is in the server's log).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from wacrm.config import ConfigError, Settings
from wacrm.hooks.delivery import DELIVERY_STATES, list_deliveries
from wacrm.hooks.subscriptions import (
    HookError,
    emitted_events,
    get_subscription,
    list_subscriptions,
    subscribe,
    unsubscribe,
)
from wacrm.rules.loader import load_ruleset
from wacrm.rules.schema import RuleFileError
from wacrm.store.accounts import ensure_account
from wacrm.store.secrets import SecretBox

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024
MAX_LIMIT = 500
_NO_TOKEN = "set WACRM_API_TOKEN to enable the API"
_NO_KEY = "secrets cannot be sealed: the server's WACRM_SECRET_KEY is unusable (see its log)"

Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status, headers=headers)


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class HooksApi:
    """The routes' handlers; ``known_events`` (default: what the loaded rules emit, read at
    the first subscription) limits what may be subscribed to; ``box`` (default: the key of
    ``settings``) seals the secrets."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        known_events: Collection[str] | None = None,
        box: SecretBox | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._box = box if box is not None else SecretBox.from_settings(settings)
        self._known = known_events
        self._account_id: int | None = None

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/hooks", self._guarded(self._collection), methods=["GET", "POST"]),
            Route("/api/hooks/{id}", self._guarded(self._remove), methods=["DELETE"]),
            Route("/api/hooks/{id}/deliveries", self._guarded(self._deliveries), methods=["GET"]),
        ]

    # -- auth ----------------------------------------------------------------------------

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            token = self._settings.api_token.reveal()
            if not token:
                return _error(503, _NO_TOKEN)
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), token.encode()
            ):
                return _error(
                    401,
                    "missing or wrong bearer token (Authorization: Bearer <WACRM_API_TOKEN>)",
                    {"WWW-Authenticate": 'Bearer realm="wacrm"'},
                )
            try:
                return await handler(request)
            except _BadRequest as exc:
                return _error(exc.status, exc.reason)

        return guarded

    # -- handlers ------------------------------------------------------------------------

    async def _collection(self, request: Request) -> Response:
        account_id = await self._account()
        if request.method == "GET":
            subs = await asyncio.to_thread(list_subscriptions, self._engine, account_id)
            return JSONResponse({"hooks": [s.as_dict() for s in subs]})
        doc = await _json_object(request)
        known = await self._known_events()
        try:
            new = await asyncio.to_thread(
                subscribe,
                self._engine,
                account_id,
                doc.get("event"),
                doc.get("target_url"),
                datetime.now(UTC),
                box=self._box,
                known_events=known,
                allow_private=self._settings.hooks_allow_private_targets,
            )
        except HookError as exc:
            return _error(422, str(exc))
        except ConfigError as exc:  # the admin's to fix; the caller learns only that
            logger.error("cannot subscribe a REST hook: %s", exc)
            return _error(503, _NO_KEY)
        sub = new.subscription
        body = {
            "id": sub.id,
            "event": sub.event,
            "target_url": sub.target_url,
            "secret": new.secret.reveal(),  # the one time it is shown
        }
        return JSONResponse(body, 201, headers={"Location": f"/api/hooks/{sub.id}"})

    async def _remove(self, request: Request) -> Response:
        sub_id = _subscription_id(request)
        account_id = await self._account()
        if not await asyncio.to_thread(unsubscribe, self._engine, account_id, sub_id):
            return _error(404, f"no subscription {sub_id}")
        return Response(status_code=204)

    async def _deliveries(self, request: Request) -> Response:
        sub_id = _subscription_id(request)
        state = request.query_params.get("state")
        if state is not None and state not in DELIVERY_STATES:
            raise _BadRequest(400, f"state must be one of {', '.join(DELIVERY_STATES)}")
        limit = _limit(request.query_params.get("limit"))
        account_id = await self._account()
        if await asyncio.to_thread(get_subscription, self._engine, account_id, sub_id) is None:
            return _error(404, f"no subscription {sub_id}")
        rows = await asyncio.to_thread(
            list_deliveries,
            self._engine,
            account_id,
            subscription_id=sub_id,
            state=state,
            limit=limit,
        )
        return JSONResponse({"deliveries": rows})

    # -- helpers -------------------------------------------------------------------------

    async def _account(self) -> int:
        if self._account_id is None:
            self._account_id = await asyncio.to_thread(
                ensure_account, self._engine, self._settings.account_name
            )
        return self._account_id

    async def _known_events(self) -> Collection[str] | None:
        if self._known is None:
            try:
                ruleset = await asyncio.to_thread(load_ruleset, self._settings.rules_dir or None)
            except RuleFileError as exc:
                # The server checks rules at start; if they broke since, names are still checked.
                logger.warning("rules unreadable, event names not checked against them: %s", exc)
                return None
            self._known = emitted_events(ruleset)
        return self._known


def hook_routes(settings: Settings, engine: Engine) -> list[BaseRoute]:
    """The ``/api/hooks`` routes, for :func:`wacrm.server.app.create_app`."""
    return HooksApi(settings, engine).routes()


def _subscription_id(request: Request) -> int:
    raw = str(request.path_params["id"])
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise _BadRequest(404, f"no subscription {raw[:40]!r}")
    return int(raw)


def _limit(raw: str | None) -> int:
    if raw is None:
        return 50
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise _BadRequest(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


async def _json_object(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise _BadRequest(413, f"body is larger than {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _BadRequest(413, f"body is larger than {MAX_BODY_BYTES} bytes")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _BadRequest(400, 'body must be JSON: {"event": ..., "target_url": ...}') from None
    if not isinstance(doc, dict):
        raise _BadRequest(400, 'body must be a JSON object: {"event": ..., "target_url": ...}')
    return doc
