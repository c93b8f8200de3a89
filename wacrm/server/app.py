"""The ASGI application: webhook endpoint, health check, and the background lifecycle.

The WhatsApp webhook path is dispatched in raw ASGI ahead of Starlette, so the hot path pays
for no routing or middleware; every other route (health, and later CRM webhooks, OAuth and the
dashboard) goes through Starlette. The lifespan owns the inbox writer thread and the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from sqlalchemy import Engine, text
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from wacrm.config import ConfigError, Settings
from wacrm.hooks.api import hook_routes
from wacrm.server.crm_webhook import crm_webhook_routes
from wacrm.server.ingest import describe_failure, wake_workers
from wacrm.server.responses import Receive, Scope, Send, send_error
from wacrm.server.twilio_webhook import TWILIO_WEBHOOK_PATH, TwilioWebhook
from wacrm.server.whatsapp_webhook import MetaWebhook
from wacrm.store.accounts import NumberDirectory
from wacrm.store.inbox import GroupCommitWriter
from wacrm.workers.base import Worker
from wacrm.workers.supervise import start_workers, stop_workers

logger = logging.getLogger(__name__)

WHATSAPP_WEBHOOK_PATH = "/webhooks/whatsapp"
_WEBHOOK_PATHS = frozenset({WHATSAPP_WEBHOOK_PATH, WHATSAPP_WEBHOOK_PATH + "/"})
_TWILIO_PATHS = frozenset({TWILIO_WEBHOOK_PATH, TWILIO_WEBHOOK_PATH + "/"})
WORKER_STOP_TIMEOUT = 10.0


def require_webhook_secrets(settings: Settings) -> None:
    """Fail closed: without these, anyone could post events or claim the callback URL."""
    if not settings.whatsapp_app_secret:
        raise ConfigError(
            "WACRM_WHATSAPP_APP_SECRET is not set: refusing to accept unsigned webhooks"
        )
    if not settings.whatsapp_verify_token:
        raise ConfigError(
            "WACRM_WHATSAPP_VERIFY_TOKEN is not set: "
            "refusing to answer Meta's verification handshake"
        )


class WacrmApp:
    """The ASGI callable uvicorn runs: webhook path first, Starlette for the rest."""

    def __init__(
        self,
        webhook: MetaWebhook,
        fallback: Starlette,
        writer: GroupCommitWriter,
        workers: Sequence[Worker],
        twilio: TwilioWebhook | None = None,
    ) -> None:
        self.webhook = webhook
        self.fallback = fallback
        self.writer = writer
        self.workers = tuple(workers)
        self.twilio = twilio

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in _WEBHOOK_PATHS:
            try:
                await self.webhook(scope, receive, send)
            except Exception:
                # A bug, not bad input; still answer JSON (and 5xx, so Meta retries). If the
                # response had already started, the server closes the connection instead.
                logger.exception("webhook handler failed")
                with contextlib.suppress(Exception):
                    await send_error(send, 500, "internal error; the webhook was not stored")
            return
        if self.twilio is not None and scope["type"] == "http" and scope["path"] in _TWILIO_PATHS:
            try:
                await self.twilio(scope, receive, send)
            except Exception:
                logger.exception("Twilio webhook handler failed")
                with contextlib.suppress(Exception):
                    await send_error(send, 500, "internal error; the webhook was not stored")
            return
        await self.fallback(scope, receive, send)


def _run_workers_lifespan(
    writer: GroupCommitWriter, workers: Sequence[Worker], on_started: Callable[[], None] | None
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        writer.start()
        stop = asyncio.Event()
        tasks = start_workers(workers, stop)
        for task in tasks:
            task.add_done_callback(lambda t: _report_exit(t, stop))
        if on_started is not None:
            on_started()
        try:
            yield
        finally:
            await stop_workers(tasks, stop, WORKER_STOP_TIMEOUT)
            # After the workers: in-flight requests are drained by the server before shutdown.
            await asyncio.to_thread(writer.stop)

    return lifespan


def _report_exit(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.error("%s crashed: %s", task.get_name(), describe_failure(exc))
    elif not stop.is_set():
        logger.warning("%s returned before it was asked to stop", task.get_name())


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)


async def _server_error(_request: Request, exc: Exception) -> Response:
    logger.error("request failed: %s", describe_failure(exc))
    return JSONResponse({"error": "internal error"}, 500)


def _ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _healthz(engine: Engine) -> Callable[[Request], Awaitable[Response]]:
    async def healthz(_request: Request) -> Response:
        try:
            # In a thread: a store that hangs must not freeze the webhook path.
            await asyncio.to_thread(_ping, engine)
        except Exception as exc:
            logger.warning("health check: store unavailable: %s", describe_failure(exc))
            return JSONResponse({"status": "error", "database": "unavailable"}, 503)
        return JSONResponse({"status": "ok", "database": "ok"})

    return healthz


def create_app(
    settings: Settings,
    engine: Engine,
    *,
    workers: Sequence[Worker] = (),
    directory: NumberDirectory | None = None,
    on_started: Callable[[], None] | None = None,
) -> WacrmApp:
    """Build the app; raises :class:`ConfigError` when the webhook secrets are missing.
    ``on_started`` runs once the writer and workers have started (``serve`` settles the
    heap there: see :mod:`wacrm.heap`)."""
    require_webhook_secrets(settings)
    # The workers are woken once per committed group of webhooks, from the writer's thread
    # (every worker's wake is thread-safe); a group with only quarantined events wakes none.
    writer = GroupCommitWriter(engine, on_commit=lambda: wake_workers(workers))
    webhook_directory = directory or NumberDirectory(engine)
    webhook = MetaWebhook(
        app_secret=settings.whatsapp_app_secret,
        verify_token=settings.whatsapp_verify_token,
        max_body_bytes=settings.max_body_bytes,
        writer=writer,
        directory=webhook_directory,
    )
    twilio = TwilioWebhook(
        auth_token=settings.twilio_auth_token,
        public_url=settings.public_url,
        max_body_bytes=settings.max_body_bytes,
        writer=writer,
        directory=webhook_directory,
    )
    routes: list[BaseRoute] = [
        Route("/healthz", _healthz(engine), methods=["GET"]),
        *hook_routes(settings, engine),  # /api/hooks: REST-hook subscriptions
        *crm_webhook_routes(settings, engine, workers),  # /webhooks/crm: CRM change events
    ]
    fallback = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=_run_workers_lifespan(writer, workers, on_started),
    )
    return WacrmApp(webhook, fallback, writer, workers, twilio)
