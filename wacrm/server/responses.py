"""Raw ASGI responses for the webhook hot path.

Starlette's Response objects are fine for the rare routes; the webhook answers thousands of
times a second, so it sends pre-built header lists and bodies straight to the server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]
# The challenge is attacker-influenced text echoed back: never let a browser sniff it as HTML.
_TEXT_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"x-content-type-options", b"nosniff"),
]

OK_BODY = b'{"status":"ok"}'


async def send_bytes(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, body: Any) -> None:
    await send_bytes(send, status, orjson.dumps(body), _JSON_HEADERS)


async def send_error(send: Send, status: int, reason: str) -> None:
    """Every error is JSON with a reason a human can act on."""
    await send_json(send, status, {"error": reason})


async def send_ok(send: Send) -> None:
    await send_bytes(send, 200, OK_BODY, _JSON_HEADERS)


async def send_text(send: Send, status: int, text: str) -> None:
    await send_bytes(send, status, text.encode(), _TEXT_HEADERS)
