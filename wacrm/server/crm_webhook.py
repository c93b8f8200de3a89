"""``POST /webhooks/crm``: CRM change webhooks, verified, then the sync loop told to read now.

Paths: ``/webhooks/crm/{crm}`` names the webhook dialect (how the CRM signs and shapes its
change events); ``/webhooks/crm`` is the default dialect, HubSpot's, which the embedded CRM
and the CRM simulator speak. A Salesforce or Dynamics receiver later is one more dialect
(``/webhooks/crm/salesforce``) with its own check; nothing else moves.

HubSpot's v3 signature, as documented ("Validating requests"): ``X-HubSpot-Signature-v3`` is
base64(HMAC-SHA256(client secret, method + URI + body + timestamp)), the timestamp being
``X-HubSpot-Request-Timestamp`` (epoch ms). The URI is the full URL HubSpot called (scheme,
host, path, query) with the characters HubSpot lists decoded (``%3A`` → ``:`` …); behind a
proxy, ``WACRM_PUBLIC_URL`` names the public base, as for Twilio. The check runs over the raw
body before anything is parsed, compares in constant time, and refuses a timestamp more than
5 minutes old (or ahead). Without ``WACRM_CRM_WEBHOOK_SECRET`` the route answers 404: unsigned
changes are never read (the server still starts; CRM webhooks are optional).

Answers: 200 ``{"woken": n, "unknown_portals": [...]}`` (an unknown portal is answered 200 and
logged: HubSpot retries anything else, and retrying never makes a portal known), 400 for a body
that is not a JSON array of events, 401 for a missing or wrong signature, 404 when off, 413 for
a body over ``max_body_bytes``, 503 when the store cannot be read.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from wacrm.config import Secret, Settings
from wacrm.server.body import BodyError, ClientDisconnected, header, read_body
from wacrm.server.twilio_webhook import request_url
from wacrm.store.accounts import TenantDirectory
from wacrm.sync.webhooks import is_event_list, route_changes
from wacrm.workers.base import Worker
from wacrm.workers.wake import CrmNotify, crm_change_listeners

logger = logging.getLogger(__name__)

CRM_WEBHOOK_PATH = "/webhooks/crm"
SIGNATURE_HEADER = "X-HubSpot-Signature-v3"
TIMESTAMP_HEADER = "X-HubSpot-Request-Timestamp"
MAX_SKEW_MS = 5 * 60 * 1000
_SHOWN_PORTALS = 20  # at most this many unknown portals named in an answer or a log line
# HubSpot decodes these in the URI it signs (docs: "Validating requests", v3).
_DECODED = {
    "%3A": ":",
    "%2F": "/",
    "%3F": "?",
    "%40": "@",
    "%21": "!",
    "%24": "$",
    "%27": "'",
    "%28": "(",
    "%29": ")",
    "%2A": "*",
    "%2C": ",",
    "%3B": ";",
}
_ENCODED = re.compile("|".join(_DECODED), re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one CRM's change webhooks are checked, and which accounts they may reach."""

    name: str
    crms: tuple[str, ...]  # ``accounts.crm`` values whose portals this dialect names


HUBSPOT = Dialect("hubspot", crms=("hubspot", "local"))  # the embedded CRM is HubSpot-shaped
DIALECTS = {HUBSPOT.name: HUBSPOT}
DEFAULT_DIALECT = HUBSPOT


class SignatureError(Exception):
    """The request is not provably from the CRM; the message says why (no secret in it)."""


def signed_uri(url: str) -> str:
    """``url`` as HubSpot signs it: the characters of its table decoded."""
    return _ENCODED.sub(lambda m: _DECODED[m.group(0).upper()], url)


def hubspot_v3_signature(secret: str, method: str, url: str, body: bytes, timestamp: str) -> str:
    message = method.encode("ascii") + signed_uri(url).encode("utf-8") + body + timestamp.encode()
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_hubspot_v3(
    *,
    secret: str,
    method: str,
    url: str,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    now_ms: int,
) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is HubSpot's v3 signature of the
    request, made within 5 minutes of ``now_ms``."""
    if not signature or not timestamp:
        raise SignatureError(f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header")
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 16:
        raise SignatureError(f"{TIMESTAMP_HEADER} is not epoch milliseconds")
    skew = now_ms - int(timestamp)
    if skew > MAX_SKEW_MS:
        raise SignatureError(f"{TIMESTAMP_HEADER} is more than 5 minutes old (replayed?)")
    if skew < -MAX_SKEW_MS:
        raise SignatureError(f"{TIMESTAMP_HEADER} is more than 5 minutes ahead of our clock")
    expected = hubspot_v3_signature(secret, method, url, body, timestamp)
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "replace")):
        raise SignatureError(
            f"{SIGNATURE_HEADER} does not match; check WACRM_CRM_WEBHOOK_SECRET (the CRM "
            "app's client secret) and that WACRM_PUBLIC_URL is the base URL the CRM calls"
        )


def _epoch_ms() -> int:
    return int(time.time() * 1000)


def _error(status: int, reason: str) -> Response:
    return JSONResponse({"error": reason}, status_code=status)


class CrmWebhook:
    """The endpoint; one per app. ``listeners`` are told of each (account, object) to read."""

    def __init__(
        self,
        *,
        secret: Secret,
        own_app_id: str,
        public_url: str,
        max_body_bytes: int,
        directories: dict[str, TenantDirectory],
        listeners: Sequence[CrmNotify],
        now_ms: Callable[[], int] = _epoch_ms,
    ) -> None:
        self._secret = secret
        self._own_app_id = own_app_id or None
        self._public_url = public_url
        self._limit = max_body_bytes
        self._directories = directories
        self._listeners = tuple(listeners)
        self._now_ms = now_ms

    async def handle(self, request: Request) -> Response:
        name = request.path_params.get("crm", DEFAULT_DIALECT.name)
        dialect = DIALECTS.get(name)
        if dialect is None:
            return _error(404, f"no CRM webhook for {name[:40]!r}; known: {', '.join(DIALECTS)}")
        if not self._secret:
            return _error(404, "CRM webhooks are off: WACRM_CRM_WEBHOOK_SECRET is unset")
        try:
            raw = await read_body(request.scope, request.receive, self._limit)
        except BodyError as exc:
            return _error(exc.status, exc.reason)
        except ClientDisconnected:
            return Response(status_code=400)  # nobody is left to read it
        try:
            verify_hubspot_v3(
                secret=self._secret.reveal(),
                method=request.method,
                url=request_url(request.scope, self._public_url),
                body=raw,
                signature=_header(request, SIGNATURE_HEADER),
                timestamp=_header(request, TIMESTAMP_HEADER),
                now_ms=self._now_ms(),
            )
        except SignatureError as exc:
            logger.info("CRM change webhook refused: %s", exc)
            return _error(401, str(exc))
        try:
            events = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(400, "body is not JSON")
        if not is_event_list(events):
            return _error(400, "body must be a JSON array of event objects")
        return await self._route(dialect, events)

    async def _route(self, dialect: Dialect, events: list[object]) -> Response:
        directory = self._directories[dialect.name]
        try:
            routing = await asyncio.to_thread(
                route_changes,
                events,
                own_app_id=self._own_app_id,
                account_for=directory.account_for,
            )
        except SQLAlchemyError as exc:
            logger.error(
                "CRM change webhook: store unavailable (%s), answered 503", type(exc).__name__
            )
            return _error(503, "the store is unavailable; the change was not read")
        unknown = [portal[:64] for portal in routing.unknown_portals[:_SHOWN_PORTALS]]
        if unknown:
            logger.warning(
                "CRM change webhook for unknown %s portal(s) %s: ignored (set WACRM_CRM_TENANT "
                "for the default account)",
                dialect.name,
                ", ".join(unknown),
            )
        for account_id, obj in routing.wake:
            for notify in self._listeners:
                try:
                    notify(account_id, obj)
                except Exception:  # a hint only: the baseline read brings the change in
                    logger.exception("account %d: CRM change could not be announced", account_id)
        woken = len(routing.wake) if self._listeners else 0
        return JSONResponse({"woken": woken, "unknown_portals": unknown})


def _header(request: Request, name: str) -> str | None:
    value = header(request.scope, name.lower().encode("ascii"))
    return None if value is None else value.decode("latin-1")


def crm_webhook_routes(
    settings: Settings, engine: Engine, workers: Sequence[Worker]
) -> list[BaseRoute]:
    """The routes for ``create_app``: the default dialect and ``/webhooks/crm/{crm}``."""
    endpoint = CrmWebhook(
        secret=settings.crm_webhook_secret,
        own_app_id=settings.crm_app_id,
        public_url=settings.public_url,
        max_body_bytes=settings.max_body_bytes,
        directories={d.name: TenantDirectory(engine, d.crms) for d in DIALECTS.values()},
        listeners=crm_change_listeners(workers),
    )
    return [
        Route(CRM_WEBHOOK_PATH, endpoint.handle, methods=["POST"]),
        Route(CRM_WEBHOOK_PATH + "/{crm}", endpoint.handle, methods=["POST"]),
    ]
