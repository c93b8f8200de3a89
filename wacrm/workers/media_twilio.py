"""Inbound Twilio attachments: where the file is, and fetching it without leaking the token.

A Twilio inbound message names its files as form fields (``NumMedia``, ``MediaUrl{N}``,
``MediaContentType{N}``); a WhatsApp message carries one, ``MediaUrl0``, a Media
subresource on the Twilio API: ``{base}/2010-04-01/Accounts/{AC…}/Messages/{SM|MM…}/Media/{ME…}``.
Twilio enforces HTTP Basic auth (Account SID, Auth Token) on every media URL, and a GET
without an extension answers the file itself with its content type
(https://www.twilio.com/docs/messaging/api/media-resource). The answer is a redirect to a
secure URL valid for 4 hours, on Twilio's CDN (mms.twiliocdn.com)
(https://support.twilio.com/hc/en-us/articles/223183748-Protect-Media-Access-with-HTTP-Basic-Authentication-for-Programmable-Messaging).
Twilio announces no hash: the worker records the one it computes.

The auth token goes only to the configured Twilio API host (``WACRM_TWILIO_API_BASE_URL``),
only for a path of that shape: a ``MediaUrl`` elsewhere is not fetched. Redirects are
followed by hand, each without credentials (any ``Authorization`` header is removed), and
only to ``https`` URLs, or to the configured API host itself (a local simulator).

Failures are :class:`TwilioMediaError` with a ``kind`` the media worker acts on: ``retry``
(5xx, 429, an expired CDN URL), ``refused`` (the API refused the credentials: waits for an
operator) or ``permanent`` (404: the media is gone; a redirect to plain http; a URL
elsewhere). Transport errors are httpx's own, left to the caller.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import orjson

from wacrm.config import DEFAULT_TWILIO_BASE_URL, Secret, Settings

PROVIDER = "twilio"
TOKEN_SETTING = "WACRM_TWILIO_AUTH_TOKEN"
SID_SETTING = "WACRM_TWILIO_ACCOUNT_SID"
BASE_URL_SETTING = "WACRM_TWILIO_API_BASE_URL"
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MEDIA_PATH = re.compile(
    r"/2010-04-01/Accounts/AC[0-9a-fA-F]{32}/Messages/(?:SM|MM)[0-9a-fA-F]{32}"
    r"/Media/ME[0-9a-fA-F]{32}"
)
_COLUMN_CHARS = 255  # media.media_id and media.mime_type are String(255)

Kind = Literal["retry", "refused", "permanent"]


class TwilioMediaError(Exception):
    """A fetch failed; ``kind`` says what to do about it. The message names no secret."""

    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind: Kind = kind


def media_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``media`` row's fields from a stored Twilio message (its form parameters):
    ``media_id`` is ``MediaUrl0``, ``mime_type`` is ``MediaContentType0``; ``error`` is set
    when there is nothing to fetch (the row is then kept as failed)."""
    url, mime = params.get("MediaUrl0"), params.get("MediaContentType0")
    mime = mime if isinstance(mime, str) and 0 < len(mime) <= _COLUMN_CHARS else None
    if not isinstance(url, str) or not url:
        return {"media_id": None, "mime_type": mime, "error": "the message names no media URL"}
    if len(url) > _COLUMN_CHARS:
        return {"media_id": None, "mime_type": mime, "error": "the media URL is too long"}
    return {"media_id": url, "mime_type": mime, "error": None}


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"https": 443, "http": 80}.get(url.scheme)
    return url.scheme, url.host, url.port or default


def _shown(url: httpx.URL) -> str:
    """Scheme and host only: a CDN URL's query is a signature, not for logs or rows."""
    return f"{url.scheme}://{url.host}" if url.host else "a URL without a host"


@dataclass(frozen=True, slots=True)
class TwilioMediaAccount:
    """The Twilio account whose credentials fetch media, and the API host they go to."""

    account_sid: str = ""
    auth_token: Secret = field(default_factory=lambda: Secret(""))
    base_url: str = DEFAULT_TWILIO_BASE_URL

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioMediaAccount:
        return cls(
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            settings.twilio_api_base_url,
        )

    def missing_settings(self) -> list[str]:
        """The settings a fetch still needs; empty when configured."""
        missing = [SID_SETTING] if not self.account_sid else []
        return missing + ([TOKEN_SETTING] if not self.auth_token else [])

    def _base(self) -> httpx.URL:
        try:
            base = httpx.URL(self.base_url.rstrip("/"))
        except httpx.InvalidURL:
            base = httpx.URL()
        if base.scheme not in ("https", "http") or not base.host:
            raise TwilioMediaError("permanent", f"{BASE_URL_SETTING} is not an http(s) URL")
        return base

    def checked_url(self, media_url: str | None) -> httpx.URL:
        """The URL to fetch with the token: ``media_url`` if it is a Media resource on the
        configured API host (same scheme, host and port), rebuilt from that host and the
        checked path; raises a ``permanent`` :class:`TwilioMediaError` otherwise, before any
        request is made."""
        base = self._base()
        try:
            url = httpx.URL(media_url or "")
        except httpx.InvalidURL:
            raise TwilioMediaError("permanent", "the media URL is not a URL") from None
        if _origin(url) != _origin(base) or url.userinfo:
            raise TwilioMediaError(
                "permanent",
                f"the media URL is on {_shown(url)}, not on the configured Twilio API host "
                f"({BASE_URL_SETTING}); not fetched",
            )
        prefix = base.path.rstrip("/")
        path = url.path
        if not path.startswith(prefix) or not _MEDIA_PATH.fullmatch(path[len(prefix) :]):
            raise TwilioMediaError(
                "permanent", "the media URL is not a Twilio Media resource; not fetched"
            )
        if url.query or url.fragment:
            raise TwilioMediaError("permanent", "the media URL has a query; not fetched")
        return base.copy_with(path=path)

    @contextlib.asynccontextmanager
    async def open(
        self, client: httpx.AsyncClient, media_url: str | None
    ) -> AsyncIterator[httpx.Response]:
        """The answer carrying the file (HTTP 200, body not yet read): the Media resource
        asked with Basic auth, then its redirects followed without any credentials."""
        url = self.checked_url(media_url)
        base = self._base()
        credentials: httpx.Auth | None = httpx.BasicAuth(self.account_sid, self.auth_token.reveal())
        for hop in range(MAX_REDIRECTS + 1):
            request = client.build_request("GET", url)
            if credentials is None:
                request.headers.pop("authorization", None)  # even a client-wide one
            response = await client.send(
                request, auth=credentials, follow_redirects=False, stream=True
            )
            try:
                status = response.status_code
                if status == 200:
                    yield response
                    return
                if status not in _REDIRECTS:
                    raise await _failure(response, redirected=hop > 0)
                url = _redirect_target(response, base)
            finally:
                await response.aclose()
            credentials = None
        raise TwilioMediaError("retry", f"Twilio media: more than {MAX_REDIRECTS} redirects")


def _redirect_target(response: httpx.Response, base: httpx.URL) -> httpx.URL:
    location = response.headers.get("location")
    if not location:
        raise TwilioMediaError(
            "retry", f"Twilio media answered HTTP {response.status_code} without a Location"
        )
    try:
        target = response.url.join(location)
    except httpx.InvalidURL:
        raise TwilioMediaError("permanent", "Twilio media redirected to an invalid URL") from None
    if target.userinfo:
        raise TwilioMediaError("permanent", "Twilio media redirected to a URL with credentials")
    if target.scheme != "https" and _origin(target) != _origin(base):
        raise TwilioMediaError(
            "permanent",
            f"Twilio media redirected to {_shown(target)}, which is not https; not followed",
        )
    return target


async def _failure(response: httpx.Response, *, redirected: bool) -> TwilioMediaError:
    """What a non-200, non-redirect answer means: from the API (``redirected`` false) a
    401/403 is a refused token and a 404 a media gone for good; from the CDN, where no
    credentials went, a 401/403/404/410 is an expired short-lived URL: fetch anew."""
    status = response.status_code
    where = "Twilio media download" if redirected else "Twilio media"
    if status in (408, 429) or status >= 500:
        return TwilioMediaError("retry", f"{where} answered HTTP {status}")
    if redirected:
        if status in (401, 403, 404, 410):
            return TwilioMediaError(
                "retry", f"{where} answered HTTP {status}: the short-lived URL expired"
            )
        return TwilioMediaError("permanent", f"{where} answered HTTP {status}")
    if status in (401, 403):
        refused = f"the auth token was refused ({TOKEN_SETTING})"
        return TwilioMediaError("refused", f"{where} answered HTTP {status}: {refused}")
    code = await _error_code(response)
    detail = f" (Twilio error {code})" if code is not None else ""
    if status == 404:
        return TwilioMediaError("permanent", f"{where} answered HTTP 404{detail}: no such media")
    return TwilioMediaError("permanent", f"{where} answered HTTP {status}{detail}")


async def _error_code(response: httpx.Response, limit: int = 4096) -> int | None:
    """Twilio's error ``code`` from a JSON error body, reading at most ``limit`` bytes."""
    body = b""
    with contextlib.suppress(httpx.HTTPError):
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    code = doc.get("code") if isinstance(doc, dict) else None
    return code if isinstance(code, int) else None
