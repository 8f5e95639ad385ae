"""Bounds on what one client can make the control API hold or do (docs/design.md,
"Control API"): the size of a request body, the time its body may take to arrive, and how
many requests the app serves at once.

`RequestLimits` is ASGI middleware in front of the app. It reads the whole body first
(at most `MAX_BODY_BYTES`, within `BODY_TIMEOUT_S`), answering 413 or 408 otherwise, then
hands the app that body while holding one of `MAX_CONCURRENT_REQUESTS` slots; requests
beyond them wait for a slot, holding no more than their socket. A client that goes away
is one debug line, never a traceback. The headers' own bounds are hypercorn's, set in
control/server.py: `MAX_HEADER_BYTES` and `HEADER_TIMEOUT_S`.
"""

from __future__ import annotations

from typing import Any

import anyio
import structlog
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("autoloopd.control")

MAX_BODY_BYTES = 16 * 1024
"""The largest request body served; a larger one is a 413 (the biggest real body is ~60 B)."""

BODY_TIMEOUT_S = 10.0
"""The time a request's body may take to arrive once its headers did; then 408."""

MAX_HEADER_BYTES = 16 * 1024
"""The request line and headers together (hypercorn's `h11_max_incomplete_size`)."""

HEADER_TIMEOUT_S = 5.0
"""A connection whose request line and headers are not complete by then is closed."""

MAX_CONCURRENT_REQUESTS = 8
"""Requests the app serves at once; the others wait (cheaply) for a slot."""


class _Refused(Exception):
    """The body is refused: `status` and `message` are the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RequestLimits:
    """ASGI middleware: bounded bodies, body timeout, bounded concurrency (module docstring)."""

    def __init__(self, app: ASGIApp, concurrency: int = MAX_CONCURRENT_REQUESTS) -> None:
        """Wrap `app`."""
        self._app = app
        self._slots = anyio.CapacityLimiter(concurrency)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request within the bounds."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        try:
            body = await _read_body(scope, receive)
        except _Refused as refused:
            response = JSONResponse({"error": str(refused)}, status_code=refused.status)
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        except ClientDisconnect:
            log.debug("client_disconnected", path=scope.get("path"), during="body")
            return
        try:
            async with self._slots:
                await self._app(scope, _replay(body, receive), send)
        except (ClientDisconnect, OSError) as exc:
            log.debug("client_disconnected", path=scope.get("path"), error=type(exc).__name__)


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    """The whole body; _Refused (413 too large, 408 too slow), ClientDisconnect."""
    declared = _content_length(scope)
    if declared is not None and declared > MAX_BODY_BYTES:
        raise _Refused(413, f"request body over {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    with anyio.move_on_after(BODY_TIMEOUT_S) as waited:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _Refused(413, f"request body over {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    assert waited.cancelled_caught
    raise _Refused(408, f"request body not received within {BODY_TIMEOUT_S:g} s")


def _content_length(scope: Scope) -> int | None:
    """The declared Content-Length (None when absent; a bad one is left to the server)."""
    for key, value in scope.get("headers") or []:
        if key == b"content-length" and value.strip().isdigit():
            return int(value)
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives `body` once, then waits on the connection (its disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        message: dict[str, Any] = {"type": "http.request", "body": body, "more_body": False}
        return message

    return replay
