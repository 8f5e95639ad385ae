"""Who is on the other end of the unix control socket: the peer's uid (SO_PEERCRED).

hypercorn hands an ASGI app no socket and no peer for a unix socket (`client` is None), so
the uid is read where the connection is accepted: `CredentialListener` wraps the listening
socket given to hypercorn and, in `accept()`, puts the new peer's uid in the context
variable `PEER_UID`. asyncio accepts on the wrapped object and creates the connection's task
right after that call, and a task copies the context it was created in: every task that
serves this connection (and so the ASGI app) sees that connection's uid. `TagPeer` copies it
into the request's scope as the `Caller`. Should a loop ever accept elsewhere (another event
loop implementation), the uid is simply unknown (None), never another peer's.
"""

from __future__ import annotations

import socket
import struct
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from autoloop_daemon.operator_action import Caller

# The ASGI scope key under which a request's `Caller` travels (read by control/api.py).
CALLER_KEY = "autoloopd.caller"

PEER_UID: ContextVar[int | None] = ContextVar("autoloopd_peer_uid", default=None)

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process that connected `conn` (a unix stream socket); None when the
    kernel does not say."""
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError):
        return None
    uid: int = _UCRED.unpack(raw)[1]
    return uid


class CredentialListener:
    """A listening unix socket whose `accept()` notes each peer's uid in `PEER_UID`; every
    other attribute is the wrapped socket's."""

    def __init__(self, sock: socket.socket) -> None:
        """Wrap `sock` (listening, non-blocking)."""
        self._sock = sock

    def accept(self) -> tuple[socket.socket, Any]:
        """Accept one connection and note its peer's uid for the tasks created next."""
        conn, address = self._sock.accept()
        PEER_UID.set(peer_uid(conn))
        return conn, address

    def __getattr__(self, name: str) -> Any:
        """Everything else as the wrapped socket does it."""
        return getattr(self._sock, name)


class TagPeer:
    """ASGI middleware for the unix socket's app: each request's scope gets its `Caller`
    (origin "socket", the peer's uid as `CredentialListener` noted it)."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap `app`."""
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Tag an HTTP request's scope, then pass it on."""
        if scope["type"] == "http":
            scope = {**scope, CALLER_KEY: Caller("socket", uid=PEER_UID.get())}
        await self._app(scope, receive, send)
