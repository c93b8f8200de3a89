"""A local stand-in for Twilio's WhatsApp send endpoint and its status callbacks.

``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` checks HTTP Basic auth and the form
the way Twilio documents it and answers with a Message resource (HTTP 201, ``status``
``queued``, an ``SM…`` sid) or Twilio's error body ``{"code", "message", "more_info",
"status"}``: 20003 (HTTP 401) for wrong credentials, 63007 for a ``From`` that is not one of
the account's WhatsApp senders, 21211 for a ``To`` that is not ``whatsapp:+E164``, 21619 with
nothing to send, 21655 for an unknown ``ContentSid`` (twilio.com/docs/api/errors/<code>).
Tests script any other answer with :meth:`TwilioSandbox.fail_next`.

Inbound media: :meth:`TwilioSandbox.add_media` stores a file and returns its ``MediaUrl``
path. ``GET`` on it with the account's Basic auth answers 307 to a short-lived URL
(``/_sandbox/twilio-media/<token>`` under :attr:`TwilioSandbox.cdn_url`, the same host when
empty), which serves the bytes to anyone, as Twilio's CDN does; 401 (20003) without the
credentials, 404 (20404) for a media it does not have.

:meth:`TwilioSandbox.status_callbacks` builds the signed ``sent`` → ``delivered`` → ``read``
callbacks Twilio would post to the message's ``StatusCallback`` (form fields as in
facts/whatsapp.md §3, ``X-Twilio-Signature`` as Twilio computes it); :meth:`deliver` posts
them. Serve :attr:`TwilioSandbox.app` (ASGI) or pass :meth:`TwilioSandbox.handler` to an
``httpx.MockTransport``. All state is on the instance; nothing at module level.
"""

from __future__ import annotations

import base64
import re
import secrets
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wacrm.whatsapp.twilio_webhook import SIGNATURE_HEADER, WHATSAPP_PREFIX, twilio_signature

_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>AC[0-9a-fA-F]{32})/Messages\.json$")
_ADDRESS = re.compile(r"^whatsapp:\+[1-9]\d{6,14}$")
_MEDIA = re.compile(
    r"^/2010-04-01/Accounts/(?P<sid>AC[0-9a-fA-F]{32})/Messages/(?:SM|MM)[0-9a-fA-F]{32}"
    r"/Media/(?P<media>ME[0-9a-fA-F]{32})$"
)
_CDN = "/_sandbox/twilio-media/"
_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    63007: "Twilio could not find a Channel with the specified From address",
    21211: "The 'To' number {to} is not a valid phone number.",
    21619: "A text message body or media urls must be specified.",
    21655: "The ContentSid is Invalid.",
}


@dataclass(frozen=True)
class SentMessage:
    sid: str
    form: dict[str, str]

    @property
    def status_callback(self) -> str | None:
        return self.form.get("StatusCallback")


@dataclass
class TwilioSandbox:
    """One Twilio account: its credentials, WhatsApp senders and Content templates."""

    account_sid: str
    auth_token: str = field(repr=False)
    senders: Collection[str] = ("whatsapp:+14155238886",)
    content_sids: Collection[str] = ()
    sent: list[SentMessage] = field(default_factory=list)
    refused: list[tuple[int, int | None]] = field(default_factory=list)  # (HTTP status, code)
    cdn_url: str = ""  # where media redirects point ("": this host)
    _media: dict[str, tuple[bytes, str]] = field(default_factory=dict, repr=False)
    _cdn: dict[str, str] = field(default_factory=dict, repr=False)  # token -> media sid
    _script: list[tuple[int, int | None, str]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fail_next(self, http_status: int, code: int | None, message: str = "scripted") -> None:
        """Answer the next send with this error (in order, before any other check; ``code``
        ``None``: an error body without a code)."""
        self._script.append((http_status, code, message))

    def add_media(self, data: bytes, content_type: str, message_sid: str | None = None) -> str:
        """Store an inbound message's file; returns its ``MediaUrl`` path (prefix the API's
        base URL), as Twilio names it in ``MediaUrl0``."""
        message_sid = message_sid or "SM" + secrets.token_hex(16)
        media_sid = "ME" + secrets.token_hex(16)
        with self._lock:
            self._media[media_sid] = (data, content_type)
        return f"/2010-04-01/Accounts/{self.account_sid}/Messages/{message_sid}/Media/{media_sid}"

    # -- the API ------------------------------------------------------------------------------

    def handler(self, request: httpx.Request) -> httpx.Response:
        """For ``httpx.MockTransport``: one request in, Twilio's answer out."""
        path = request.url.path
        if request.method == "GET" and (_MEDIA.match(path) or path.startswith(_CDN)):
            status, headers, body = self._media_answer(path, request.headers)
            return httpx.Response(status, headers=headers, content=body)
        status, doc = self._answer(request.method, path, request.headers, request.content)
        return httpx.Response(status, json=doc)

    @property
    def app(self) -> Starlette:
        async def messages(request: Request) -> Response:
            path = request.url.path
            if request.method == "GET" and (_MEDIA.match(path) or path.startswith(_CDN)):
                status, headers, body = self._media_answer(path, request.headers)
                return Response(body, status, headers=headers)
            status, doc = self._answer(request.method, path, request.headers, await request.body())
            return JSONResponse(doc, status)

        return Starlette(routes=[Route("/{path:path}", messages, methods=["POST", "GET"])])

    def _answer(
        self, method: str, path: str, headers: Any, content: bytes
    ) -> tuple[int, dict[str, Any]]:
        match = _PATH.match(path)
        if method != "POST" or match is None:
            return 404, self._error(404, 20404, "The requested resource was not found")
        if not self._authorised(headers.get("authorization", ""), match["sid"]):
            return self._refuse(401, 20003)
        with self._lock:
            if self._script:
                status, code, message = self._script.pop(0)
                self.refused.append((status, code))
                return status, self._error(status, code, message)
        form = dict(parse_qsl(content.decode("utf-8"), keep_blank_values=True))
        if form.get("From") not in self.senders:
            return self._refuse(400, 63007)
        if not _ADDRESS.match(form.get("To", "")):
            return self._refuse(400, 21211, to=form.get("To", ""))
        if not (form.get("Body") or form.get("MediaUrl") or form.get("ContentSid")):
            return self._refuse(400, 21619)
        if "ContentSid" in form and form["ContentSid"] not in self.content_sids:
            return self._refuse(400, 21655)
        sid = "SM" + secrets.token_hex(16)
        with self._lock:
            self.sent.append(SentMessage(sid, form))
        return 201, self._resource(sid, form)

    def _media_answer(self, path: str, headers: Any) -> tuple[int, dict[str, str], bytes]:
        """The Media resource (Basic auth, then 307) or the short-lived URL (no auth)."""
        if path.startswith(_CDN):
            with self._lock:
                found = self._media.get(self._cdn.get(path.removeprefix(_CDN), ""))
            if found is None:
                return 404, {"content-type": "text/plain"}, b"Not Found"
            return 200, {"content-type": found[1]}, found[0]
        match = _MEDIA.match(path)
        assert match is not None
        if not self._authorised(headers.get("authorization", ""), match["sid"]):
            return self._json(*self._refuse(401, 20003))
        with self._lock:
            if match["media"] not in self._media:
                self.refused.append((404, 20404))
                return self._json(404, self._error(404, 20404, _MESSAGES[20404]))
            token = secrets.token_urlsafe(16)
            self._cdn[token] = match["media"]
        return 307, {"location": f"{self.cdn_url.rstrip('/')}{_CDN}{token}"}, b""

    @staticmethod
    def _json(status: int, doc: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        return status, {"content-type": "application/json"}, orjson.dumps(doc)

    def _authorised(self, header: str, path_sid: str) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return path_sid == self.account_sid and secrets.compare_digest(header, f"Basic {expected}")

    def _refuse(self, status: int, code: int, **fill: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.refused.append((status, code))
        return status, self._error(status, code, _MESSAGES[code].format(**fill))

    @staticmethod
    def _error(status: int, code: int | None, message: str) -> dict[str, Any]:
        if code is None:
            return {"message": message, "status": status}
        return {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }

    def _resource(self, sid: str, form: dict[str, str]) -> dict[str, Any]:
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}"
        now = formatdate(usegmt=True)
        return {
            "sid": sid,
            "account_sid": self.account_sid,
            "from": form["From"],
            "to": form["To"],
            "body": form.get("Body", ""),
            "status": "queued",
            "num_segments": "1",
            "num_media": "1" if form.get("MediaUrl") else "0",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "date_created": now,
            "date_updated": now,
            "date_sent": None,
            "error_code": None,
            "error_message": None,
            "messaging_service_sid": None,
            "price": None,
            "price_unit": "USD",
            "uri": uri + ".json",
            "subresource_uris": {"media": uri + "/Media.json"},
        }

    # -- status callbacks ---------------------------------------------------------------------

    def status_callbacks(
        self,
        sid: str,
        statuses: Sequence[str] = ("sent", "delivered", "read"),
        *,
        url: str | None = None,
        error_code: int | None = None,
    ) -> list[tuple[str, dict[str, str], dict[str, str]]]:
        """``(url, form, headers)`` of each status callback for message ``sid``, signed with
        the auth token; ``url`` defaults to the message's ``StatusCallback``."""
        message = next(m for m in self.sent if m.sid == sid)
        target = url or message.status_callback
        if not target:
            raise ValueError(f"message {sid} was sent without a StatusCallback")
        posts = []
        for status in statuses:
            form = {
                "MessageSid": sid,
                "SmsSid": sid,
                "MessageStatus": status,
                "SmsStatus": status,
                "AccountSid": self.account_sid,
                "From": message.form["From"],
                "To": message.form["To"],
                "ChannelToAddress": message.form["To"].removeprefix(WHATSAPP_PREFIX),
                "ApiVersion": "2010-04-01",
            }
            if error_code is not None and status in ("failed", "undelivered"):
                form["ErrorCode"] = str(error_code)
            headers = {
                "Content-Type": "application/x-www-form-urlencoded",
                SIGNATURE_HEADER: twilio_signature(target, form.items(), self.auth_token),
            }
            posts.append((target, form, headers))
        return posts

    async def deliver(self, sid: str, http: httpx.AsyncClient, **kwargs: Any) -> list[int]:
        """Post :meth:`status_callbacks` in order; returns each answer's HTTP status."""
        answers = []
        for url, form, headers in self.status_callbacks(sid, **kwargs):
            response = await http.post(url, content=urlencode(form).encode(), headers=headers)
            answers.append(response.status_code)
        return answers
