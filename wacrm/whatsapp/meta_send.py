"""Meta Cloud API send: one client, the Graph error envelope as :class:`SendError`.

``POST {graph_url}/{phone_number_id}/messages`` with a prepared body (see
:mod:`wacrm.whatsapp.meta_bodies`). A 200 means Meta *accepted* the message, not that it was
delivered; delivery arrives later as status webhooks. The client never retries: what to do
about a failure is the outbox worker's decision, made from :mod:`wacrm.whatsapp.errors`.

The access token goes only into the ``Authorization`` header; neither it nor the header ever
appears in a :class:`SendError`, a log line or a repr.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from wacrm.config import Secret, Settings
from wacrm.whatsapp.errors import ErrorRule, SendAction, classify
from wacrm.whatsapp.meta_bodies import (
    ListRow,
    ListSection,
    ReplyButton,
    body_parameters,
    buttons_message,
    list_message,
    location_message,
    media_message,
    recipient,
    template_message,
    text_message,
    with_callback_data,
)

__all__ = [
    "CloudApiClient",
    "ListRow",
    "ListSection",
    "MediaInfo",
    "ReplyButton",
    "SendError",
    "SendResult",
    "body_parameters",
    "buttons_message",
    "list_message",
    "location_message",
    "media_message",
    "parse_error",
    "parse_retry_after",
    "parse_success",
    "recipient",
    "template_message",
    "text_message",
    "with_callback_data",
]


class SendError(Exception):
    """A send that Meta refused, or that never got an answer.

    ``code`` is the Graph error code (``None`` for network failures and non-Graph answers);
    branch on it through :attr:`rule`, never on ``title`` or ``http_status``.
    """

    def __init__(
        self,
        *,
        code: int | None,
        title: str,
        message: str = "",
        subcode: int | None = None,
        details: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
        fbtrace_id: str | None = None,
        error_type: str | None = None,
    ) -> None:
        self.code = code
        self.subcode = subcode
        self.title = title
        self.message = message
        self.details = details
        self.http_status = http_status
        self.retry_after = retry_after
        self.fbtrace_id = fbtrace_id
        self.error_type = error_type
        super().__init__(self.summary)

    @property
    def rule(self) -> ErrorRule:
        return classify(self.code)

    @property
    def action(self) -> SendAction:
        return self.rule.action

    @property
    def summary(self) -> str:
        """One line for logs and ``last_error``: code, title, details, HTTP status."""
        head = f"(#{self.code}) {self.title}" if self.code is not None else self.title
        parts = [head]
        if self.details and self.details != self.title:
            parts.append(self.details)
        if self.http_status is not None:
            parts.append(f"HTTP {self.http_status}")
        return " — ".join(parts)

    def __repr__(self) -> str:
        return f"SendError(code={self.code!r}, subcode={self.subcode!r}, title={self.title!r})"


@dataclass(frozen=True, slots=True)
class SendResult:
    provider_message_id: str  # the wamid status webhooks will carry
    wa_id: str | None  # WhatsApp's id for the recipient (may differ from the input number)
    input: str | None
    message_status: str | None = None  # e.g. "accepted", "held_for_quality_assessment"


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date; else ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _usage_wait(headers: httpx.Headers) -> float | None:
    """Seconds until access returns, from Graph's business-use-case usage header (minutes)."""
    raw = headers.get("x-business-use-case-usage")
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    minutes = [
        item.get("estimated_time_to_regain_access")
        for items in (doc.values() if isinstance(doc, dict) else [])
        if isinstance(items, list)
        for item in items
        if isinstance(item, dict)
    ]
    waits = [float(m) for m in minutes if isinstance(m, int | float) and m > 0]
    return max(waits) * 60.0 if waits else None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def parse_error(response: httpx.Response, now: datetime) -> SendError:
    """Turn a non-2xx answer into a :class:`SendError` (Graph envelope, or whatever came)."""
    retry_after = parse_retry_after(response.headers.get("retry-after"), now)
    if retry_after is None:
        retry_after = _usage_wait(response.headers)
    try:
        doc = response.json()
    except ValueError:
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return SendError(
            code=None,
            title=f"HTTP {response.status_code} without a Graph error body",
            http_status=response.status_code,
            retry_after=retry_after,
        )
    data = err.get("error_data") if isinstance(err.get("error_data"), dict) else {}
    code = _int_or_none(err.get("code"))
    message = str(err.get("message") or "")
    rule = classify(code)
    # Meta's own short title when it sends one; else ours for a known code; else its message.
    title = err.get("error_user_title") or (
        rule.title if rule.code is not None else message or rule.title
    )
    return SendError(
        code=code,
        subcode=_int_or_none(err.get("error_subcode")),
        title=str(title),
        message=message,
        details=str(data["details"]) if data and data.get("details") else None,
        http_status=response.status_code,
        retry_after=retry_after,
        fbtrace_id=str(err["fbtrace_id"]) if err.get("fbtrace_id") else None,
        error_type=str(err["type"]) if err.get("type") else None,
    )


def parse_success(response: httpx.Response) -> SendResult:
    """Read the wamid from a 200; a 200 without one is an error we can retry."""
    try:
        doc = response.json()
    except ValueError:
        doc = None
    messages = doc.get("messages") if isinstance(doc, dict) else None
    first = messages[0] if isinstance(messages, list) and messages else None
    if not isinstance(first, dict) or not first.get("id"):
        raise SendError(
            code=None,
            title="HTTP 200 without a message id",
            http_status=response.status_code,
        )
    assert isinstance(doc, dict)
    contacts = doc.get("contacts")
    contact = contacts[0] if isinstance(contacts, list) and contacts else {}
    contact = contact if isinstance(contact, dict) else {}
    return SendResult(
        provider_message_id=str(first["id"]),
        wa_id=contact.get("wa_id"),
        input=contact.get("input"),
        message_status=first.get("message_status"),
    )


@dataclass(frozen=True, slots=True)
class MediaInfo:
    id: str
    url: str  # short-lived (5 min); download it with the same Bearer token
    mime_type: str | None
    sha256: str | None
    file_size: int | None


def _is_json(response: httpx.Response) -> bool:
    try:
        return isinstance(response.json(), dict)
    except ValueError:
        return False


def _network_error(exc: httpx.HTTPError) -> SendError:
    # The exception's class and the host it was for: never our headers (the token).
    try:
        host = exc.request.url.host
    except RuntimeError:  # raised without a request
        host = ""
    where = f" at {host}" if host else ""
    return SendError(
        code=None, title=f"No answer from the Cloud API{where}", message=type(exc).__name__
    )


class CloudApiClient:
    """Sends prepared message bodies to the Cloud API over an injected httpx client.

    Give ``settings`` (base URL, version and token from configuration) or the three values
    explicitly; explicit values win. ``http`` is an ``httpx.Client`` for :meth:`send` or an
    ``httpx.AsyncClient`` for :meth:`asend`; it is never closed here (the caller owns it).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        http: httpx.Client | httpx.AsyncClient,
        base_url: str | None = None,
        version: str | None = None,
        access_token: Secret | str | None = None,
        timeout: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        base = base_url or (settings.whatsapp_api_base_url if settings else None)
        ver = version or (settings.whatsapp_api_version if settings else None)
        token = (
            access_token
            if access_token is not None
            else (settings.whatsapp_access_token if settings else None)
        )
        if not base or not ver:
            raise ValueError("CloudApiClient needs settings or base_url and version")
        self.graph_url = f"{base.rstrip('/')}/{ver.strip('/')}"
        self._token = token if isinstance(token, Secret) else Secret(token or "")
        self._http = http
        self._timeout = timeout
        self._clock = clock

    def __repr__(self) -> str:
        return f"CloudApiClient(graph_url={self.graph_url!r}, access_token={self._token!r})"

    def messages_url(self, phone_number_id: str) -> str:
        return f"{self.graph_url}/{phone_number_id}/messages"

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._token.reveal()}",
            "Content-Type": "application/json",
        }

    def _result(self, response: httpx.Response) -> SendResult:
        if 200 <= response.status_code < 300:
            return parse_success(response)
        raise parse_error(response, self._clock())

    def send(self, phone_number_id: str, body: dict[str, Any]) -> SendResult:
        """Send ``body`` from ``phone_number_id``; raises :class:`SendError` on any failure."""
        if not isinstance(self._http, httpx.Client):
            raise TypeError("send() needs an httpx.Client; use asend() with an AsyncClient")
        try:
            response = self._http.post(
                self.messages_url(phone_number_id),
                json=body,
                headers=self._headers(),
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            raise _network_error(exc) from None
        return self._result(response)

    def _sync(self) -> httpx.Client:
        if not isinstance(self._http, httpx.Client):
            raise TypeError("media calls need an httpx.Client")
        return self._http

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._token.reveal()}"}
        try:
            response = self._sync().request(
                method, url, headers=headers, timeout=self._timeout, **kwargs
            )
        except httpx.HTTPError as exc:
            raise _network_error(exc) from None
        if not 200 <= response.status_code < 300:
            raise parse_error(response, self._clock())
        return response

    def upload_media(
        self, phone_number_id: str, content: bytes, mime_type: str, filename: str = "file"
    ) -> str:
        """Upload a file (``POST /{phone_number_id}/media``); returns the media id to send.
        An id is preferred over a link, which Meta caches for only 10 minutes."""
        response = self._call(
            "POST",
            f"{self.graph_url}/{phone_number_id}/media",
            data={"messaging_product": "whatsapp", "type": mime_type},
            files={"file": (filename, content, mime_type)},
        )
        media_id = response.json().get("id") if _is_json(response) else None
        if not media_id:
            raise SendError(code=None, title="Upload answered without a media id")
        return str(media_id)

    def media_info(self, media_id: str) -> MediaInfo:
        """``GET /{media_id}``: where to download it (the URL expires after 5 minutes)."""
        doc = self._call("GET", f"{self.graph_url}/{media_id}").json()
        return MediaInfo(
            id=str(doc.get("id") or media_id),
            url=str(doc["url"]),
            mime_type=doc.get("mime_type"),
            sha256=doc.get("sha256"),
            file_size=_int_or_none(doc.get("file_size")),
        )

    def download_media(self, url: str) -> bytes:
        """The bytes behind a :meth:`media_info` URL (Bearer required; 404 once expired)."""
        return self._call("GET", url).content

    async def asend(self, phone_number_id: str, body: dict[str, Any]) -> SendResult:
        """Async twin of :meth:`send` (same parsing; only the I/O differs)."""
        if not isinstance(self._http, httpx.AsyncClient):
            raise TypeError("asend() needs an httpx.AsyncClient; use send() with a Client")
        try:
            response = await self._http.post(
                self.messages_url(phone_number_id),
                json=body,
                headers=self._headers(),
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            raise _network_error(exc) from None
        return self._result(response)
