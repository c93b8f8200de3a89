"""The CRM simulator over HTTP (Starlette), and its command line.

Run it on loopback for benchmarks and crash tests::

    python -m wacrm.sandbox.crm_app --port 0 --max-batch 100 --rate-limit 110 --window 10 \
        --fault-rate 0.1 --seed 1 --webhook-url http://127.0.0.1:8000/webhooks/crm \
        --client-secret "$SECRET" --portal-id 62515

With ``--client-secret`` the change webhooks are signed as HubSpot signs them
(``X-HubSpot-Signature-v3`` and ``X-HubSpot-Request-Timestamp``), so ``wacrm serve`` with the
same ``WACRM_CRM_WEBHOOK_SECRET`` (and ``WACRM_CRM_TENANT`` = the portal id) accepts them.

It prints ``listening on http://127.0.0.1:PORT`` once the socket is bound. Besides the API it
answers ``GET /_sim/stats``, ``GET /_sim/records/{object}``, ``POST /_sim/records/{object}/{key}``
(an edit by a CRM user, which fires a change webhook) and ``POST /_sim/faults``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from wacrm.sandbox.crm import CrmSimulator, Faults, SimConfig, sign_v3

logger = logging.getLogger(__name__)
WEBHOOK_BATCH = 100  # HubSpot sends up to 100 events per request


class SimulatedReset(ConnectionResetError):
    """Raised after a partial answer, so the server drops the connection mid-response."""


class _ResetResponse(Response):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"status":', "more_body": True})
        raise SimulatedReset("simulated connection reset")


class _QuietResets(logging.Filter):
    """uvicorn logs the deliberate resets as application errors; they are not."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SimulatedReset)


class WebhookSender:
    """Delivers change events to ``url`` in batches, in the background, like HubSpot does:
    signed (v3) when there is a client secret, retried a few times on failure."""

    def __init__(
        self,
        url: str,
        client_secret: str = "",
        *,
        epoch_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.url = url
        self._client_secret = client_secret
        self._epoch_ms = epoch_ms
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.delivered = 0
        self.failed = 0
        self.refused = 0  # answered 4xx but 429: not retried (a bad signature stays bad)

    def push(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.queue.put_nowait(event)

    def headers(self, body: bytes) -> dict[str, str]:
        """What HubSpot sends with ``body``: JSON, and the v3 signature when it has a secret."""
        headers = {"Content-Type": "application/json"}
        if self._client_secret:
            # Signed per attempt: a retry carries a fresh timestamp.
            now = self._epoch_ms()
            headers["X-HubSpot-Request-Timestamp"] = str(now)
            headers["X-HubSpot-Signature-v3"] = sign_v3(
                self._client_secret, "POST", self.url, body, now
            )
        return headers

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=10.0) as client:
            while True:
                batch = [await self.queue.get()]
                while not self.queue.empty() and len(batch) < WEBHOOK_BATCH:
                    batch.append(self.queue.get_nowait())
                body = json.dumps(batch).encode()
                for attempt in range(3):
                    try:
                        response = await client.post(
                            self.url, content=body, headers=self.headers(body)
                        )
                        if response.status_code < 300:
                            self.delivered += len(batch)
                            break
                        if 400 <= response.status_code < 500 and response.status_code != 429:
                            self.refused += len(batch)
                            logger.warning(
                                "webhook refused with %d: %s",
                                response.status_code,
                                response.text[:200],
                            )
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.2 * (attempt + 1))
                else:
                    self.failed += len(batch)


def create_app(simulator: CrmSimulator, webhook_url: str | None = None) -> Starlette:
    """The simulator's API; with ``webhook_url``, its change events are posted there (signed
    with ``simulator.config.client_secret`` when set)."""
    sender = WebhookSender(webhook_url, simulator.config.client_secret) if webhook_url else None
    if sender is not None:
        simulator.subscribe(sender.push)

    async def api(request: Request) -> Response:
        try:
            raw = await request.body()
        except ClientDisconnect:  # the client died mid-request (the crash tests kill it)
            return Response(status_code=499)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return JSONResponse({"status": "error", "message": "Invalid JSON"}, status_code=400)
        answer = simulator.handle(request.method, request.url.path, body)
        if answer.delay:
            await asyncio.sleep(answer.delay)
        if answer.fault == "reset":
            return _ResetResponse()
        if answer.fault == "timeout":  # the client gave up long ago
            return JSONResponse({"status": "error", "message": "timeout"}, status_code=504)
        return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)

    async def stats(request: Request) -> Response:
        data = simulator.stats()
        if sender is not None:
            data["webhooks"] = {
                "delivered": sender.delivered,
                "failed": sender.failed,
                "refused": sender.refused,
            }
        return JSONResponse(data)

    async def records(request: Request) -> Response:
        return JSONResponse(simulator.records(request.path_params["object"]))

    async def edit(request: Request) -> Response:
        body = await request.json()
        record = simulator.edit(
            request.path_params["object"], request.path_params["key"], body["properties"]
        )
        return JSONResponse(record)

    async def faults(request: Request) -> Response:
        body = await request.json()
        current = simulator.config.faults
        simulator.config.faults = Faults(
            rate=float(body.get("rate", current.rate)),
            kinds=tuple(body.get("kinds", current.kinds)),
            applied_share=float(body.get("applied_share", current.applied_share)),
            timeout_delay=float(body.get("timeout_delay", current.timeout_delay)),
        )
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(sender.run()) if sender is not None else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    routes = [
        Route("/crm/v3/objects/{object}/batch/upsert", api, methods=["POST"]),
        Route("/crm/v3/objects/{object}/search", api, methods=["POST"]),
        Route("/_sim/stats", stats, methods=["GET"]),
        Route("/_sim/records/{object}", records, methods=["GET"]),
        Route("/_sim/records/{object}/{key}", edit, methods=["POST"]),
        Route("/_sim/faults", faults, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def quiet_resets() -> None:
    logging.getLogger("uvicorn.error").addFilter(_QuietResets())


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="HubSpot-like CRM simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-batch", type=int, default=100)
    parser.add_argument("--rate-limit", type=int, default=110)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--timeout-delay", type=float, default=2.0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--webhook-url", default=None)
    parser.add_argument(
        "--client-secret",
        default="",
        help="the app's client secret: sign change webhooks (X-HubSpot-Signature-v3)",
    )
    parser.add_argument("--portal-id", type=int, default=SimConfig.portal_id)
    parser.add_argument("--app-id", type=int, default=SimConfig.app_id)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the simulator listens on loopback only")
    config = SimConfig(
        max_batch=args.max_batch,
        rate_limit=args.rate_limit,
        window=args.window,
        faults=Faults(rate=args.fault_rate, timeout_delay=args.timeout_delay),
        seed=args.seed,
        latency=args.latency,
        portal_id=args.portal_id,
        app_id=args.app_id,
        client_secret=args.client_secret,
    )
    app = create_app(CrmSimulator(config), args.webhook_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1024)
    print(f"listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    quiet_resets()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
