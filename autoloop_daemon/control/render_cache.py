"""One rendering of a costly answer (`GET /api/status`) reused by every client for a short
interval, so that many pollers cost the event loop what one does (docs/design.md, "Control
API"). A command that changes something (`fresh_after`) drops the rendering at once, so a
client that acted and then reads sees what it did."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

REUSE_S = 0.5
"""How long one rendering of the status is served before it is rendered again."""

Request = TypeVar("Request")
Answer = TypeVar("Answer")


class RenderCache:
    """`render()`'s bytes, rendered at most once per `reuse_s` (or after a change)."""

    def __init__(self, render: Callable[[], bytes], reuse_s: float = REUSE_S) -> None:
        """Hold `render`; nothing is rendered before the first `get`."""
        self._render = render
        self._reuse_s = reuse_s
        self._body: bytes | None = None
        self._at = 0.0

    def get(self) -> bytes:
        """The last rendering when it is recent enough, else a new one."""
        now = time.monotonic()
        if self._body is None or now - self._at >= self._reuse_s:
            self._body = self._render()  # synchronous: no other request renders meanwhile
            self._at = now
        return self._body

    def drop(self) -> None:
        """Forget the rendering: the next `get` renders anew."""
        self._body = None

    def fresh_after(
        self, handler: Callable[[Request], Awaitable[Answer]]
    ) -> Callable[[Request], Awaitable[Answer]]:
        """`handler`, dropping the rendering once it has acted."""

        async def handle(request: Request) -> Answer:
            try:
                return await handler(request)
            finally:
                self.drop()

        return handle
