"""Reading a request body in raw ASGI, with a hard size limit.

The limit is checked twice: against ``Content-Length`` before reading anything (cheap refusal),
and while streaming, because a chunked body has no length and a client may lie about it.
"""

from __future__ import annotations

from wacrm.server.responses import Receive, Scope


class BodyError(Exception):
    """The body cannot be accepted; ``status`` and the message say why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ClientDisconnected(Exception):
    """The client went away before sending the whole body: there is nobody to answer."""


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _too_large(limit: int) -> BodyError:
    return BodyError(413, f"body is larger than the {limit} byte limit for webhooks")


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, or :class:`BodyError` (400 bad length, 413 too large)."""
    declared = header(scope, b"content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise BodyError(400, "Content-Length is not an integer") from None
        if length < 0:
            raise BodyError(400, "Content-Length is negative")
        if length > limit:
            raise _too_large(limit)
    # Fast path: a small body usually arrives in one message.
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise _too_large(limit)
        return body
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
