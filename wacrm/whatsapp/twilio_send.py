"""Sending WhatsApp messages through Twilio's ``Messages.json``.

``POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json`` with HTTP Basic (Account SID,
Auth Token) and form fields ``From=whatsapp:+…``, ``To=whatsapp:+…`` and either
``Body``/``MediaUrl`` or ``ContentSid`` + ``ContentVariables`` (a template), plus
``StatusCallback``. A 201 means *accepted*: delivery arrives later as status callbacks, which
name the message by the ``sid`` returned here.

Failures are classified, not retried here (the outbox worker owns retries):
:class:`TwilioSendError` is a :class:`~wacrm.whatsapp.meta_send.SendError` whose rule comes
from :mod:`wacrm.whatsapp.twilio_errors`, so the worker reacts to both providers alike.
The token never appears in an error, a log line or a repr.

Like :class:`~wacrm.whatsapp.meta_send.CloudApiClient`, one class serves a synchronous
``httpx.Client`` (:meth:`TwilioSender.send`, the outbox worker's thread) and an
``httpx.AsyncClient`` (:meth:`TwilioSender.asend`): the form and the answer's parsing are
shared; only the I/O differs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from wacrm.config import Secret, Settings
from wacrm.whatsapp.errors import ErrorRule, SendAction
from wacrm.whatsapp.meta_send import SendError, parse_retry_after
from wacrm.whatsapp.twilio_errors import TWILIO_ERROR_TABLE, classify_twilio
from wacrm.whatsapp.twilio_webhook import WHATSAPP_PREFIX

API_VERSION = "2010-04-01"


@dataclass(frozen=True, slots=True)
class TwilioAccepted:
    sid: str  # the MessageSid status callbacks will name
    status: str  # queued | accepted | …


class TwilioSendError(SendError):
    """Twilio refused or could not take the message. ``code`` is Twilio's error code
    (``None`` without one); ``http_status`` is ``None`` when no answer came at all."""

    def __init__(
        self,
        http_status: int | None,
        code: int | None,
        message: str,
        *,
        retry_after: float | None = None,
    ) -> None:
        known = code is not None and code in TWILIO_ERROR_TABLE
        rule = classify_twilio(code, http_status)
        super().__init__(
            code=code,
            title=rule.title if known or not message else message,
            message=message,
            details=message if known else None,
            http_status=http_status,
            retry_after=retry_after,
        )

    @property
    def rule(self) -> ErrorRule:
        return classify_twilio(self.code, self.http_status)

    @property
    def retryable(self) -> bool:
        """True when the same request may succeed later (backoff)."""
        return self.action is SendAction.RETRY_BACKOFF

    @property
    def summary(self) -> str:
        return "Twilio " + super().summary

    def __repr__(self) -> str:
        return f"TwilioSendError(code={self.code!r}, http_status={self.http_status!r})"


def whatsapp_address(number: str) -> str:
    """``+14155238886`` or ``14155238886`` → ``whatsapp:+14155238886`` (kept if prefixed)."""
    if number.startswith(WHATSAPP_PREFIX):
        return number
    return WHATSAPP_PREFIX + (number if number.startswith("+") else "+" + number)


class TwilioSender:
    """One Twilio account's send endpoint. The client is injected (tests pass a mock
    transport) and never closed here: the caller owns its lifetime."""

    def __init__(
        self,
        client: httpx.Client | httpx.AsyncClient,
        account_sid: str,
        auth_token: Secret,
        base_url: str,
        *,
        timeout: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not account_sid or not auth_token:
            raise ValueError("Twilio needs WACRM_TWILIO_ACCOUNT_SID and WACRM_TWILIO_AUTH_TOKEN")
        self._client = client
        self._sid = account_sid
        self._token = auth_token
        self._timeout = timeout
        self._clock = clock
        self.url = f"{base_url.rstrip('/')}/{API_VERSION}/Accounts/{account_sid}/Messages.json"

    @classmethod
    def from_settings(
        cls, client: httpx.Client | httpx.AsyncClient, settings: Settings
    ) -> TwilioSender:
        return cls(
            client,
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            settings.twilio_api_base_url,
        )

    def __repr__(self) -> str:
        return f"TwilioSender(url={self.url!r}, auth_token={self._token!r})"

    def send(
        self,
        *,
        from_: str,
        to: str,
        body: str | None = None,
        media_url: str | None = None,
        content_sid: str | None = None,
        content_variables: Mapping[str, str] | None = None,
        status_callback: str | None = None,
    ) -> TwilioAccepted:
        """Send one message on an ``httpx.Client``; raises :class:`TwilioSendError` when
        Twilio does not accept it."""
        if not isinstance(self._client, httpx.Client):
            raise TypeError("send() needs an httpx.Client; use asend() with an AsyncClient")
        form = _form(from_, to, body, media_url, content_sid, content_variables, status_callback)
        try:
            response = self._client.post(
                self.url, data=form, auth=self._auth(), timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            raise _no_answer(exc) from None
        return _accepted(response, self._clock())

    async def asend(
        self,
        *,
        from_: str,
        to: str,
        body: str | None = None,
        media_url: str | None = None,
        content_sid: str | None = None,
        content_variables: Mapping[str, str] | None = None,
        status_callback: str | None = None,
    ) -> TwilioAccepted:
        """Async twin of :meth:`send` on an ``httpx.AsyncClient``."""
        if not isinstance(self._client, httpx.AsyncClient):
            raise TypeError("asend() needs an httpx.AsyncClient; use send() with a Client")
        form = _form(from_, to, body, media_url, content_sid, content_variables, status_callback)
        try:
            response = await self._client.post(
                self.url, data=form, auth=self._auth(), timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            raise _no_answer(exc) from None
        return _accepted(response, self._clock())

    def _auth(self) -> tuple[str, str]:
        return (self._sid, self._token.reveal())


def _form(
    from_: str,
    to: str,
    body: str | None,
    media_url: str | None,
    content_sid: str | None,
    content_variables: Mapping[str, str] | None,
    status_callback: str | None,
) -> dict[str, str]:
    if content_sid is None and not body and not media_url:
        raise ValueError("a Twilio message needs a body, a media URL or a ContentSid")
    form: dict[str, str] = {"From": whatsapp_address(from_), "To": whatsapp_address(to)}
    if content_sid is not None:
        form["ContentSid"] = content_sid
        if content_variables:
            form["ContentVariables"] = orjson.dumps(dict(content_variables)).decode()
    else:
        if body:
            form["Body"] = body
        if media_url:
            form["MediaUrl"] = media_url
    if status_callback:
        form["StatusCallback"] = status_callback
    return form


def _no_answer(exc: httpx.HTTPError) -> TwilioSendError:
    # A timeout may mean Twilio took it: the retry that follows risks a duplicate, as with
    # Meta (no idempotency key on Messages.json). Only the class name: never the request.
    return TwilioSendError(None, None, f"no answer ({type(exc).__name__})")


def _accepted(response: httpx.Response, now: datetime) -> TwilioAccepted:
    try:
        doc: Any = response.json()
    except ValueError:
        doc = None
    doc = doc if isinstance(doc, dict) else {}
    if response.status_code in (200, 201) and isinstance(doc.get("sid"), str):
        return TwilioAccepted(sid=doc["sid"], status=str(doc.get("status") or "queued"))
    if 200 <= response.status_code < 300:  # taken, but with no sid to follow it by
        raise TwilioSendError(response.status_code, None, "accepted without a message sid")
    code = doc.get("code") if isinstance(doc.get("code"), int) else None
    message = str(doc.get("message") or response.reason_phrase or "no reason given")[:300]
    retry_after = parse_retry_after(response.headers.get("retry-after"), now)
    raise TwilioSendError(response.status_code, code, message, retry_after=retry_after)
