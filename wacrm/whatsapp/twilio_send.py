"""Sending WhatsApp messages through Twilio's ``Messages.json``.

``POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json`` with HTTP Basic (Account SID,
Auth Token) and form fields ``From=whatsapp:+…``, ``To=whatsapp:+…`` and either
``Body``/``MediaUrl`` or ``ContentSid`` + ``ContentVariables`` (a template), plus
``StatusCallback``. A 201 means *accepted*: delivery arrives later as status callbacks.

Failures are classified, not retried here (the outbox worker owns retries): 429, 20429
("too many concurrent requests", never processed, always safe to retry) and 5xx are
retryable; other 4xx are permanent. The token never appears in an error or a log line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from wacrm.config import Secret, Settings
from wacrm.whatsapp.twilio_webhook import WHATSAPP_PREFIX

API_VERSION = "2010-04-01"
_RETRYABLE_CODES = frozenset({20429})


@dataclass(frozen=True, slots=True)
class TwilioAccepted:
    sid: str  # the MessageSid status callbacks will name
    status: str  # queued | accepted | …


class TwilioSendError(Exception):
    """Twilio refused or could not take the message; ``retryable`` says whether to try again."""

    def __init__(
        self, http_status: int, code: int | None, message: str, *, retryable: bool
    ) -> None:
        super().__init__(f"Twilio {http_status}" + (f" ({code})" if code else "") + f": {message}")
        self.http_status = http_status
        self.code = code
        self.message = message
        self.retryable = retryable


def whatsapp_address(number: str) -> str:
    """``+14155238886`` or ``14155238886`` → ``whatsapp:+14155238886`` (kept if prefixed)."""
    if number.startswith(WHATSAPP_PREFIX):
        return number
    return WHATSAPP_PREFIX + (number if number.startswith("+") else "+" + number)


class TwilioSender:
    """One Twilio account's send endpoint. The client is injected (tests pass a mock
    transport); the caller owns its lifetime."""

    def __init__(
        self, client: httpx.AsyncClient, account_sid: str, auth_token: Secret, base_url: str
    ) -> None:
        if not account_sid or not auth_token:
            raise ValueError("Twilio needs WACRM_TWILIO_ACCOUNT_SID and WACRM_TWILIO_AUTH_TOKEN")
        self._client = client
        self._sid = account_sid
        self._token = auth_token
        self._url = f"{base_url.rstrip('/')}/{API_VERSION}/Accounts/{account_sid}/Messages.json"

    @classmethod
    def from_settings(cls, client: httpx.AsyncClient, settings: Settings) -> TwilioSender:
        return cls(
            client,
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            settings.twilio_api_base_url,
        )

    async def send(
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
        """Send one message; raises :class:`TwilioSendError` when Twilio does not accept it."""
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
        try:
            response = await self._client.post(
                self._url, data=form, auth=(self._sid, self._token.reveal())
            )
        except httpx.TimeoutException:
            # Twilio may have taken it: a retry risks a duplicate, which the caller weighs.
            raise TwilioSendError(0, None, "timed out", retryable=True) from None
        except httpx.TransportError as exc:
            raise TwilioSendError(0, None, type(exc).__name__, retryable=True) from None
        return _accepted(response)


def _accepted(response: httpx.Response) -> TwilioAccepted:
    try:
        doc: Any = response.json()
    except ValueError:
        doc = None
    doc = doc if isinstance(doc, dict) else {}
    if response.status_code in (200, 201) and isinstance(doc.get("sid"), str):
        return TwilioAccepted(sid=doc["sid"], status=str(doc.get("status") or "queued"))
    code = doc.get("code") if isinstance(doc.get("code"), int) else None
    message = str(doc.get("message") or response.reason_phrase or "no reason given")[:300]
    retryable = (
        response.status_code == 429 or response.status_code >= 500 or code in _RETRYABLE_CODES
    )
    raise TwilioSendError(response.status_code, code, message, retryable=retryable)
