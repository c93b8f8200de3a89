"""A local stand-in for the WhatsApp Cloud API: send endpoint, status webhooks, inbound messages.

``POST /{version}/{phone_number_id}/messages`` checks the Bearer token and the body the way
Meta does (Graph error envelopes, see :mod:`wacrm.sandbox.whatsapp_checks`), answers with a
``wamid``, and later posts signed ``sent`` → ``delivered`` → ``read`` status webhooks in Meta's
envelope to ``webhook_url``, retrying anything but HTTP 200 a bounded number of times (Meta
retries for up to 7 days; a sandbox gives up sooner).

Every piece of state lives on one :class:`WhatsAppSandbox`; there are no module globals, so
tests can run many side by side. Time comes from an injected ``clock`` and webhooks are posted
by :meth:`WhatsAppSandbox.deliver_due`, which tests call directly; under uvicorn a background
task calls it (``run_dispatcher``).

Test and demo hooks live under ``/_sandbox/`` (Meta has no such paths): ``POST
/_sandbox/inbound`` makes a user write to a business number (opening the 24 h window and
posting the inbound message webhook), ``GET /_sandbox/sent`` lists accepted sends.
Media upload, look-up and download follow Meta's flow (:mod:`wacrm.sandbox.whatsapp_media`).
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wacrm.sandbox.whatsapp_checks import (
    MEDIA_TYPES,
    GraphError,
    PairRate,
    Throughput,
    ValidMessage,
    check_bearer,
    pair_rate_error,
    recipient_digits,
    template_missing_error,
    throughput_error,
    unknown_object,
    validate_message,
)
from wacrm.sandbox.whatsapp_media import LIMITS, MediaStore, media_error
from wacrm.sandbox.whatsapp_payloads import (
    RE_ENGAGEMENT,
    UNDELIVERABLE,
    WINDOW_SECONDS,
    business_scoped_user_id,
    envelope,
    inbound_text,
    statuses_for,
    value_with,
)
from wacrm.whatsapp.meta_webhook import sign

log = logging.getLogger(__name__)

DEFAULT_PHONE_NUMBER_ID = "106540352242922"
DEFAULT_DISPLAY_NUMBER = "15550783881"


@dataclass(frozen=True)
class SandboxConfig:
    """What the sandbox expects and does. Secrets are kept out of the repr."""

    access_token: str = field(repr=False)
    app_secret: str = field(repr=False)
    webhook_url: str | None = None
    phone_numbers: Mapping[str, str] = field(
        default_factory=lambda: {DEFAULT_PHONE_NUMBER_ID: DEFAULT_DISPLAY_NUMBER}
    )  # phone_number_id → display phone number
    waba_id: str = "102290129340398"
    # Seconds after acceptance at which each status is posted; leave one out to skip it
    # (Meta skips ``delivered`` when it is read at once).
    status_delays: Mapping[str, float] = field(
        default_factory=lambda: {"sent": 0.0, "delivered": 0.5, "read": 2.0}
    )
    webhook_max_attempts: int = 5
    webhook_retry_base: float = 1.0  # seconds; doubles per attempt, like Meta's backoff
    webhook_timeout: float = 10.0
    undeliverable: frozenset[str] = frozenset()  # wa_ids whose sends fail with 131026
    templates: Mapping[str, frozenset[str]] | None = None  # name → languages; None: any
    template_category: str = "utility"
    mps: int | None = 80  # None: throughput not enforced
    pair_limit: bool = True  # 131056 past ~1 msg / 6 s per user (burst 45)
    enforce_window: bool = False  # free-form outside 24 h of the user's last message → 131047
    # Business-scoped user ids (user_id, from_user_id, recipient_user_id), as Meta sends them
    # since April 2026; off: the older shapes without them.
    business_scoped_user_ids: bool = True

    def __post_init__(self) -> None:
        if not self.access_token or not self.app_secret:
            raise ValueError("the sandbox needs an access token and an app secret")
        if not self.phone_numbers:
            raise ValueError("the sandbox needs at least one phone number id")


@dataclass(frozen=True, slots=True)
class SentMessage:
    wamid: str
    phone_number_id: str
    wa_id: str
    type: str
    body: dict[str, Any]
    accepted_at: float


@dataclass(frozen=True, slots=True)
class Refusal:
    phone_number_id: str
    http_status: int
    code: int
    body: Any


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook POST attempt and how the receiver answered (``status`` None: no answer)."""

    url: str
    payload: dict[str, Any]
    raw: bytes
    attempt: int
    status: int | None
    at: float


@dataclass(order=True)
class _Event:
    due: float
    seq: int
    phone_number_id: str = field(compare=False)
    value: dict[str, Any] = field(compare=False)  # the ``value`` of one change
    attempt: int = field(default=0, compare=False)


class WhatsAppSandbox:
    """One simulated Cloud API; ``app`` is the ASGI app, the lists are what it saw."""

    def __init__(
        self,
        config: SandboxConfig,
        *,
        clock: Callable[[], float] = time.time,
        webhook_http: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.sent: list[SentMessage] = []
        self.refused: list[Refusal] = []
        self.deliveries: list[Delivery] = []
        self.undelivered: list[dict[str, Any]] = []  # gave up after webhook_max_attempts
        self._clock = clock
        self._sleep = sleep
        self._http = webhook_http
        self._owns_http = webhook_http is None
        self._queue: list[_Event] = []
        self._seq = 0
        self._last_inbound: dict[tuple[str, str], float] = {}
        self._throughput = Throughput(config.mps) if config.mps else None
        self._pair = PairRate() if config.pair_limit else None
        self.media = MediaStore(clock)
        self._lock = asyncio.Lock()
        self.app = self._build_app()

    # -- state a test or demo drives ------------------------------------------------------

    def pending(self) -> int:
        """Webhooks still waiting to be posted (including retries)."""
        return len(self._queue)

    def inbound(
        self,
        from_: str,
        text: str = "hi",
        *,
        phone_number_id: str | None = None,
        name: str | None = None,
        at: float | None = None,
    ) -> str:
        """A user writes to a business number: opens the 24 h window and queues the inbound
        message webhook. Returns the inbound wamid."""
        pnid = phone_number_id or next(iter(self.config.phone_numbers))
        if pnid not in self.config.phone_numbers:
            raise ValueError(f"phone number id {pnid} is not served by this sandbox")
        wa_id = recipient_digits(from_)
        now = self._clock() if at is None else at
        self._last_inbound[(pnid, wa_id)] = now
        if self._throughput is not None:
            self._throughput.admit(pnid, now)  # inbound counts toward the number's mps
        wamid = self._new_wamid(wa_id)
        contacts, messages = inbound_text(
            wamid=wamid,
            wa_id=wa_id,
            text=text,
            name=name or "Sandbox User",
            at=now,
            user_id=self._user_id(wa_id),
        )
        value = value_with(self._metadata(pnid), "messages", messages)
        value["contacts"] = contacts
        self._schedule(now, pnid, value)
        return wamid

    def _user_id(self, wa_id: str) -> str | None:
        if not self.config.business_scoped_user_ids:
            return None
        return business_scoped_user_id(self.config.waba_id, wa_id)

    # -- webhook dispatch -----------------------------------------------------------------

    def _schedule(self, due: float, phone_number_id: str, value: dict[str, Any]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, _Event(due, self._seq, phone_number_id, value))

    def envelope(self, value: dict[str, Any]) -> dict[str, Any]:
        return envelope(self.config.waba_id, value)

    async def deliver_due(self, *, everything: bool = False) -> int:
        """Post every webhook that is due (all of them with ``everything``); returns how many
        were answered 200. Non-200 answers are retried later with doubling delays."""
        url = self.config.webhook_url
        if url is None:
            self._queue.clear()
            return 0
        delivered = 0
        async with self._lock:
            now = self._clock()
            batch: list[_Event] = []
            while self._queue and (everything or self._queue[0].due <= now):
                batch.append(heapq.heappop(self._queue))
            for event in batch:
                if await self._post(url, event):
                    delivered += 1
        return delivered

    async def drain(self, max_rounds: int = 100) -> int:
        """Deliver until nothing is pending (retries included), ignoring due times."""
        delivered = 0
        for _ in range(max_rounds):
            if not self._queue:
                break
            delivered += await self.deliver_due(everything=True)
        return delivered

    async def _post(self, url: str, event: _Event) -> bool:
        payload = self.envelope(event.value)
        # Compact, ASCII-escaped JSON, as Meta sends it: receivers must hash the raw bytes.
        raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign(raw, self.config.app_secret),
            "User-Agent": "facebookexternalua",
        }
        event.attempt += 1
        status: int | None = None
        try:
            response = await self._client().post(
                url, content=raw, headers=headers, timeout=self.config.webhook_timeout
            )
            status = response.status_code
        except httpx.HTTPError as exc:
            log.info("sandbox webhook to %s got no answer: %s", url, type(exc).__name__)
        self.deliveries.append(Delivery(url, payload, raw, event.attempt, status, self._clock()))
        if status == 200:  # Meta treats anything but 200 as a failure
            return True
        if event.attempt >= self.config.webhook_max_attempts:
            log.warning("sandbox gave up on a webhook after %d attempts", event.attempt)
            self.undelivered.append(payload)
            return False
        event.due = self._clock() + self.config.webhook_retry_base * 2 ** (event.attempt - 1)
        heapq.heappush(self._queue, event)
        return False

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient()
        return self._http

    async def run_dispatcher(self, stop: asyncio.Event, poll: float = 0.05) -> None:
        """Post due webhooks until ``stop`` is set (what the uvicorn runner does)."""
        while not stop.is_set():
            try:
                await self.deliver_due()
            except Exception:  # a broken receiver must not kill the dispatcher
                log.exception("sandbox webhook dispatch failed")
            await self._sleep(poll)

    async def aclose(self) -> None:
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- the Cloud API --------------------------------------------------------------------

    def _metadata(self, phone_number_id: str) -> dict[str, str]:
        return {
            "display_phone_number": self.config.phone_numbers[phone_number_id],
            "phone_number_id": phone_number_id,
        }

    def _new_wamid(self, wa_id: str) -> str:
        # Unique across restarts too: the store keys messages on the wamid.
        raw = b"\x1c\x18\x0b" + wa_id.encode() + b"\x15\x02\x00\x11\x18\x12" + uuid.uuid4().bytes
        return "wamid." + base64.b64encode(raw).decode()

    def _error(self, exc: GraphError, phone_number_id: str, body: Any) -> JSONResponse:
        content = exc.body(fbtrace_id="A" + secrets.token_urlsafe(16))
        self.refused.append(Refusal(phone_number_id, exc.http_status, exc.code, body))
        return JSONResponse(content, status_code=exc.http_status)

    def in_window(self, phone_number_id: str, wa_id: str, now: float) -> bool:
        last = self._last_inbound.get((phone_number_id, wa_id))
        return last is not None and now - last < WINDOW_SECONDS

    def _check_limits(self, pnid: str, msg: ValidMessage, doc: dict[str, Any], now: float) -> None:
        media_id = (doc.get(msg.type) or {}).get("id") if msg.type in MEDIA_TYPES else None
        uploaded = self.media.get(str(media_id)) if media_id is not None else None
        if uploaded is not None and LIMITS[uploaded.mime_type][0] != msg.type:
            raise media_error(f"Media {media_id} is {uploaded.mime_type}, not {msg.type}.")
        templates = self.config.templates
        if msg.template is not None and templates is not None:
            name, language = msg.template
            if language not in templates.get(name, frozenset()):
                raise template_missing_error(name, language)
        if self._throughput is not None and not self._throughput.admit(pnid, now):
            raise throughput_error()
        if self._pair is not None and not self._pair.admit(pnid, msg.wa_id, now):
            raise pair_rate_error()

    async def _send(self, request: Request) -> Response:
        pnid = request.path_params["phone_number_id"]
        raw = await request.body()
        try:
            check_bearer(request.headers.get("authorization"), self.config.access_token)
            if pnid not in self.config.phone_numbers:
                raise unknown_object(pnid)
            try:
                doc: Any = json.loads(raw)
            except ValueError:
                doc = None
            msg = validate_message(doc)
            now = self._clock()
            self._check_limits(pnid, msg, doc, now)
        except GraphError as exc:
            return self._error(exc, pnid, raw.decode("utf-8", "replace"))
        wamid = self._new_wamid(msg.wa_id)
        self.sent.append(SentMessage(wamid, pnid, msg.wa_id, msg.type, doc, now))
        self._schedule_statuses(request.path_params["version"], pnid, msg, wamid, now)
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": msg.to, "wa_id": msg.wa_id}],
                "messages": [{"id": wamid}],
            }
        )

    def _schedule_statuses(
        self, version: str, pnid: str, msg: ValidMessage, wamid: str, now: float
    ) -> None:
        failure = None
        if msg.wa_id in self.config.undeliverable:
            failure = UNDELIVERABLE
        elif (
            self.config.enforce_window
            and msg.type != "template"
            and not self.in_window(pnid, msg.wa_id, now)
        ):
            # Meta accepts the send (200, wamid) and reports the refusal as a failed status.
            failure = RE_ENGAGEMENT
        for at, status in statuses_for(
            wamid=wamid,
            wa_id=msg.wa_id,
            callback_data=msg.callback_data,
            template=msg.type == "template",
            version=version,
            accepted_at=now,
            delays=self.config.status_delays,
            failure=failure,
            template_category=self.config.template_category,
            user_id=self._user_id(msg.wa_id),
        ):
            self._schedule(at, pnid, value_with(self._metadata(pnid), "statuses", [status]))

    async def _inbound_route(self, request: Request) -> Response:
        try:
            doc = json.loads(await request.body())
            if not isinstance(doc, dict) or not isinstance(doc.get("from"), str):
                raise ValueError("body must be a JSON object with 'from'")
            wamid = self.inbound(
                doc["from"],
                str(doc.get("text", "hi")),
                phone_number_id=doc.get("phone_number_id"),
                name=doc.get("name"),
            )
        except (ValueError, GraphError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"id": wamid})

    async def _sent_route(self, request: Request) -> Response:
        return JSONResponse(
            [
                {
                    "id": s.wamid,
                    "phone_number_id": s.phone_number_id,
                    "wa_id": s.wa_id,
                    "type": s.type,
                    "body": s.body,
                    "accepted_at": s.accepted_at,
                }
                for s in self.sent
            ]
        )

    async def _upload_route(self, request: Request) -> Response:
        pnid = request.path_params["phone_number_id"]
        try:
            check_bearer(request.headers.get("authorization"), self.config.access_token)
            if pnid not in self.config.phone_numbers:
                raise unknown_object(pnid)
            media = self.media.upload(await request.body(), request.headers.get("content-type", ""))
        except GraphError as exc:
            return self._error(exc, pnid, "<multipart>")
        return JSONResponse({"id": media.id})

    async def _media_info_route(self, request: Request) -> Response:
        media_id = request.path_params["media_id"]
        try:
            check_bearer(request.headers.get("authorization"), self.config.access_token)
            media = self.media.get(media_id)
            if media is None:
                raise unknown_object(media_id)
        except GraphError as exc:
            return self._error(exc, "", media_id)
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "url": self.media.url_for(media, str(request.base_url)),
                "mime_type": media.mime_type,
                "sha256": media.sha256,
                "file_size": len(media.data),
                "id": media.id,
            }
        )

    async def _download_route(self, request: Request) -> Response:
        try:
            check_bearer(request.headers.get("authorization"), self.config.access_token)
        except GraphError as exc:
            return self._error(exc, "", "download")
        media = self.media.download(request.path_params["token"])
        if media is None:  # unknown or expired: fetch a new URL (facts §1, Media download)
            return Response(status_code=404)
        return Response(media.data, media_type=media.mime_type)

    def _build_app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            stop = asyncio.Event()
            task = asyncio.create_task(self.run_dispatcher(stop))
            try:
                yield
            finally:
                stop.set()
                await task
                await self.aclose()

        return Starlette(
            routes=[
                Route("/_sandbox/inbound", self._inbound_route, methods=["POST"]),
                Route("/_sandbox/sent", self._sent_route, methods=["GET"]),
                Route("/_sandbox/media/{token}", self._download_route, methods=["GET"]),
                Route("/{version}/{phone_number_id}/messages", self._send, methods=["POST"]),
                Route("/{version}/{phone_number_id}/media", self._upload_route, methods=["POST"]),
                Route("/{version}/{media_id}", self._media_info_route, methods=["GET"]),
            ],
            lifespan=lifespan,
        )


def create_sandbox_app(config: SandboxConfig, **kwargs: Any) -> Starlette:
    """The ASGI app of a new sandbox; the sandbox itself is ``app.state.sandbox``."""
    sandbox = WhatsAppSandbox(config, **kwargs)
    sandbox.app.state.sandbox = sandbox
    return sandbox.app


def serve_sandbox(config: SandboxConfig, host: str = "127.0.0.1", port: int = 8081) -> None:
    """Run a sandbox under uvicorn until interrupted (``wacrm sandbox whatsapp``)."""
    import uvicorn

    uvicorn.run(create_sandbox_app(config), host=host, port=port, log_level="info")
