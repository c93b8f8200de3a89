"""``/webhooks/whatsapp``: Meta's verification handshake (GET) and event delivery (POST).

Raw ASGI on purpose: this is the hot path (thousands of webhooks a second), so it skips the
framework's request objects and routing. A POST is answered 200 only once its events are
committed (invariant 1); anything the store cannot take is a 503, which Meta retries.
"""

from __future__ import annotations

import hmac
import logging
from datetime import UTC, datetime
from urllib.parse import parse_qs

import orjson
from sqlalchemy.exc import SQLAlchemyError

from wacrm.config import Secret
from wacrm.server.body import BodyError, ClientDisconnected, header, read_body
from wacrm.server.ingest import answer_not_stored, rows_for_events
from wacrm.server.responses import Receive, Scope, Send, send_error, send_ok, send_text
from wacrm.store.accounts import NumberDirectory
from wacrm.store.inbox import GroupCommitWriter
from wacrm.whatsapp.meta_webhook import PayloadError, split_envelope, verify_signature

logger = logging.getLogger(__name__)

_SIGNATURE_HEADER = b"x-hub-signature-256"


class MetaWebhook:
    """The ASGI endpoint; one instance per app, shared by every request."""

    def __init__(
        self,
        *,
        app_secret: Secret,
        verify_token: Secret,
        max_body_bytes: int,
        writer: GroupCommitWriter,
        directory: NumberDirectory,
        commit_timeout: float = 10.0,
    ) -> None:
        self._app_secret = app_secret
        self._verify_token = verify_token
        self._limit = max_body_bytes
        self._writer = writer
        self._directory = directory
        self._commit_timeout = commit_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method == "POST":
            await self._deliver(scope, receive, send)
        elif method == "GET":
            await self._handshake(scope, send)
        else:
            await send_error(send, 405, f"method {method} not allowed: use GET or POST")

    async def _handshake(self, scope: Scope, send: Send) -> None:
        # No signature on the GET: Meta does not sign it (checking one broke elizaOS#17823).
        query = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        mode = query.get("hub.mode", [""])[0]
        token = query.get("hub.verify_token", [""])[0]
        challenge = query.get("hub.challenge", [""])[0]
        if mode != "subscribe":
            await send_error(send, 403, "hub.mode must be 'subscribe'")
            return
        expected = self._verify_token.reveal().encode()
        if not hmac.compare_digest(token.encode(), expected):
            await send_error(
                send, 403, "hub.verify_token does not match WACRM_WHATSAPP_VERIFY_TOKEN"
            )
            return
        if not challenge:
            await send_error(send, 400, "hub.challenge is missing")
            return
        await send_text(send, 200, challenge)

    async def _deliver(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            raw = await read_body(scope, receive, self._limit)
        except BodyError as exc:
            await send_error(send, exc.status, exc.reason)
            return
        except ClientDisconnected:
            return
        signature = header(scope, _SIGNATURE_HEADER)
        if signature is None:
            await send_error(send, 401, "missing X-Hub-Signature-256 header")
            return
        if not verify_signature(raw, signature.decode("latin-1"), self._app_secret.reveal()):
            await send_error(
                send,
                401,
                "X-Hub-Signature-256 does not match the body; check WACRM_WHATSAPP_APP_SECRET",
            )
            return
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            await send_error(send, 400, f"body is not valid JSON: {exc}")
            return
        try:
            events = list(split_envelope(doc))
        except PayloadError as exc:
            await send_error(send, 400, f"not a WhatsApp webhook envelope: {exc}")
            return
        except (TypeError, ValueError, AttributeError) as exc:
            # A shape the splitter did not foresee (e.g. an unhashable wa_id): still bad input.
            logger.warning("webhook envelope could not be split: %s", type(exc).__name__)
            await send_error(send, 400, f"not a WhatsApp webhook envelope ({type(exc).__name__})")
            return
        if not events:
            await send_ok(send)
            return
        now = datetime.now(UTC)
        try:
            # Cached after the first hit per number, so normally no query here.
            rows, quarantined = rows_for_events(
                events, self._directory.account_for, now, self._directory.account_for_waba
            )
        except SQLAlchemyError as exc:
            await answer_not_stored(send, "account directory unavailable", exc)
            return
        try:
            # The timeout bounds a stalled writer; giving up does not unwrite the rows.
            await self._writer.submit_async(rows, quarantined, timeout=self._commit_timeout)
        except Exception as exc:
            await answer_not_stored(send, f"webhook with {len(events)} events not stored", exc)
            return
        await send_ok(send)
