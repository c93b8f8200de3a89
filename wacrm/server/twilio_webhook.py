"""``POST /webhooks/twilio``: Twilio WhatsApp inbound messages and status callbacks.

Same contract as the Meta endpoint: the signature is checked before anything is parsed, a
POST is answered 200 only once its event is committed to the inbox (invariant 1), input that
can never be stored (no ``MessageSid``, an unknown business number) is kept in quarantine
with its reason and acknowledged, and a store that cannot take it is a 503.

Twilio signs the URL *it* called. Behind a proxy or tunnel the server sees another one, so
``WACRM_PUBLIC_URL`` names the public base; without it the request's Host header and scheme
are used. Twilio expects TwiML or an empty 200: the answer is an empty ``<Response/>``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qsl

import orjson
from sqlalchemy.exc import SQLAlchemyError

from wacrm.config import Secret
from wacrm.server.body import BodyError, ClientDisconnected, header, read_body
from wacrm.server.ingest import answer_not_stored
from wacrm.server.responses import Receive, Scope, Send, send_bytes, send_error
from wacrm.store.accounts import NumberDirectory
from wacrm.store.inbox import GroupCommitWriter, InboxRow, QuarantineRow
from wacrm.store.schema import inbox
from wacrm.whatsapp import twilio_webhook as twilio

TWILIO_WEBHOOK_PATH = "/webhooks/twilio"
QUARANTINE_SOURCE = "webhook:twilio"
_EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
_XML_HEADERS = [(b"content-type", b"text/xml; charset=utf-8")]
_EVENT_ID_WIDTH: int = getattr(inbox.c.event_id.type, "length", None) or 255


def request_url(scope: Scope, public_url: str) -> str:
    """The URL Twilio called: ``public_url`` + path (+ query), else as the server saw it."""
    path = scope.get("root_path", "") + scope["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    if public_url:
        base = public_url.rstrip("/")
    else:
        host = header(scope, b"host")
        server = scope.get("server") or ("localhost", None)
        authority = (
            host.decode("latin-1")
            if host
            else (f"{server[0]}:{server[1]}" if server[1] else server[0])
        )
        base = f"{scope.get('scheme', 'http')}://{authority}"
    return f"{base}{path}?{query}" if query else base + path


class TwilioWebhook:
    """The ASGI endpoint; one instance per app."""

    def __init__(
        self,
        *,
        auth_token: Secret,
        public_url: str,
        max_body_bytes: int,
        writer: GroupCommitWriter,
        directory: NumberDirectory,
        commit_timeout: float = 10.0,
    ) -> None:
        self._auth_token = auth_token
        self._public_url = public_url
        self._limit = max_body_bytes
        self._writer = writer
        self._directory = directory
        self._commit_timeout = commit_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await send_error(send, 405, f"method {scope['method']} not allowed: use POST")
            return
        if not self._auth_token:
            # Fail closed: without the token no request can be authenticated.
            await send_error(send, 404, "Twilio webhooks are off: WACRM_TWILIO_AUTH_TOKEN is unset")
            return
        try:
            raw = await read_body(scope, receive, self._limit)
        except BodyError as exc:
            await send_error(send, exc.status, exc.reason)
            return
        except ClientDisconnected:
            return
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            await send_error(send, 400, "body is not UTF-8 form data")
            return
        signature = header(scope, twilio.SIGNATURE_HEADER.encode())
        if signature is None:
            await send_error(send, 401, "missing X-Twilio-Signature header")
            return
        url = request_url(scope, self._public_url)
        token = self._auth_token.reveal()
        if not twilio.verify_twilio_signature(url, pairs, signature.decode("latin-1"), token):
            await send_error(
                send,
                401,
                "X-Twilio-Signature does not match; check WACRM_TWILIO_AUTH_TOKEN and that "
                "WACRM_PUBLIC_URL is the base URL Twilio calls",
            )
            return
        await self._store(dict(pairs), send)

    async def _store(self, params: dict[str, str], send: Send) -> None:
        now = datetime.now(UTC)
        try:
            rows, quarantined = self._rows(params, now)
        except SQLAlchemyError as exc:
            await answer_not_stored(send, "account directory unavailable", exc)
            return
        try:
            await self._writer.submit_async(rows, quarantined, timeout=self._commit_timeout)
        except Exception as exc:
            await answer_not_stored(send, "Twilio webhook not stored", exc)
            return
        await send_bytes(send, 200, _EMPTY_TWIML, _XML_HEADERS)

    def _rows(
        self, params: dict[str, str], now: datetime
    ) -> tuple[list[InboxRow], list[QuarantineRow]]:
        kind = twilio.event_kind(params)
        number = twilio.business_number(params)
        event_id = twilio.event_id(params)
        account_id = self._directory.account_for(number) if number else None
        reason = None
        if number is None:
            reason = f"{kind} has no {'From' if kind == 'status' else 'To'} number"
        elif account_id is None:
            reason = f"Twilio number {number} is not registered to any account"
        elif event_id is None:
            reason = f"{kind} has no MessageSid" + (" or MessageStatus" if kind == "status" else "")
        elif len(event_id) > _EVENT_ID_WIDTH:
            reason = f"event id is longer than the inbox's {_EVENT_ID_WIDTH} characters"
        if reason is not None:
            payload = orjson.dumps({"kind": kind, "params": params}).decode()
            return [], [QuarantineRow(account_id, QUARANTINE_SOURCE, reason, payload, now)]
        assert account_id is not None and event_id is not None
        payload = orjson.dumps(twilio.inbox_payload(params, now)).decode()
        return [InboxRow(account_id, twilio.PROVIDER, kind, event_id, payload, now)], []
