"""One rendering of a costly answer (`GET /api/status`, `GET /api/status/report`) reused by
every client for a short interval, so that many pollers cost the event loop what one does
(docs/design.md, "Control API"). A command that changes something (`fresh_after`) drops
every rendering at once, so a client that acted and then reads sees what it did. A
rendering too old to be served is let go (`Expiring`): at 10,000 targets `status --json`
is ~7 MB, which stayed until the next request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import anyio

REUSE_S = 0.5
"""How long one rendering is served before it is rendered again."""

Key = TypeVar("Key", bound=Hashable)
Request = TypeVar("Request")
Answer = TypeVar("Answer")


class RenderCache(Generic[Key]):
    """`render(key)`'s bytes, rendered at most once per `reuse_s` for each key (or after a
    change); the keys are the forms of one answer, from a bounded set."""

    def __init__(self, render: Callable[[Key], Awaitable[bytes]], reuse_s: float = REUSE_S) -> None:
        """Hold `render`; nothing is rendered before the first `get`."""
        self._render = render
        self._reuse_s = reuse_s
        self._bodies: dict[Key, tuple[float, bytes]] = {}
        self._rendering = anyio.Lock()
        self._generation = 0
        self._expiring = Expiring(reuse_s, self._bodies.clear)

    async def get(self, key: Key) -> bytes:
        """The last rendering of `key` when it is recent enough, else a new one. One
        rendering at a time: a client arriving meanwhile waits, then is given that
        rendering when it asked for the same key."""
        async with self._rendering:
            now = time.monotonic()
            held = self._bodies.get(key)
            if held is not None and now - held[0] < self._reuse_s:
                return held[1]
            generation = self._generation
            body = await self._render(key)
            # Only the recent renderings are kept: a key not asked for again goes.
            for old in [k for k, v in self._bodies.items() if now - v[0] >= self._reuse_s]:
                del self._bodies[old]
            if generation == self._generation:  # else a change came meanwhile: not kept
                self._bodies[key] = (now, body)
                self._expiring.touch()  # all of them go once none is asked for meanwhile
            return body

    def drop(self) -> None:
        """Forget every rendering, and any under way: the next `get` renders anew."""
        self._generation += 1
        self._bodies.clear()

    def fresh_after(
        self, handler: Callable[[Request], Awaitable[Answer]]
    ) -> Callable[[Request], Awaitable[Answer]]:
        """`handler`, dropping the renderings once it has acted."""

        async def handle(request: Request) -> Answer:
            try:
                return await handler(request)
            finally:
                self.drop()

        return handle


class Expiring:
    """Calls `expire()` once `after_s` have passed without a `touch` (one timer of the
    running asyncio loop pending at a time)."""

    def __init__(self, after_s: float, expire: Callable[[], object]) -> None:
        """Nothing is timed before the first `touch`."""
        self._after_s = after_s
        self._expire = expire
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def touch(self) -> None:
        """Used now: `expire()` comes `after_s` from now, unless touched again."""
        self._last = time.monotonic()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._after_s, self._check)

    def _check(self) -> None:
        left_s = self._last + self._after_s - time.monotonic()
        if left_s > 0:  # touched meanwhile
            self._timer = asyncio.get_running_loop().call_later(left_s, self._check)
        else:
            self._timer = None
            self._expire()
