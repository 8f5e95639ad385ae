"""`RenderCache`: one rendering per key and interval shared by every client, a client that
arrives during a rendering waits for it, and a change (`drop`) is never hidden by a
rendering that began before it."""

from __future__ import annotations

import sys

import anyio
import pytest

from autoloop_daemon.control.render_cache import Expiring, RenderCache

pytestmark = pytest.mark.anyio


class Renderer:
    """Renders `<key>:<count>`, each rendering held until `gate` is set."""

    def __init__(self) -> None:
        self.count = 0
        self.gate = anyio.Event()
        self.began = anyio.Event()

    async def __call__(self, key: str) -> bytes:
        self.count += 1
        count = self.count
        self.began.set()
        await self.gate.wait()
        return f"{key}:{count}".encode()


async def test_clients_during_a_rendering_share_it_and_keys_render_apart() -> None:
    render = Renderer()
    cache: RenderCache[str] = RenderCache(render, reuse_s=60.0)
    got: list[bytes] = []

    async def get(key: str) -> None:
        got.append(await cache.get(key))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(get, "text")
        await render.began.wait()
        render.gate.set()
    assert got == [b"text:1"] * 5 and render.count == 1
    assert await cache.get("json") == b"json:2"
    assert await cache.get("text") == b"text:1"  # still within its interval


async def test_a_drop_during_a_rendering_is_not_hidden_by_it() -> None:
    render = Renderer()
    cache: RenderCache[str] = RenderCache(render, reuse_s=60.0)
    got: list[bytes] = []

    async def get() -> None:
        got.append(await cache.get("text"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(get)
        await render.began.wait()
        cache.drop()  # a command acted while the rendering was under way
        render.gate.set()
    assert got == [b"text:1"]  # the client that asked before the change gets it
    assert await cache.get("text") == b"text:2"  # the next one sees the change
    assert await cache.get("text") == b"text:2"


async def test_a_rendering_is_renewed_after_its_interval() -> None:
    render = Renderer()
    render.gate.set()
    cache: RenderCache[str] = RenderCache(render, reuse_s=0.0)
    assert await cache.get("text") == b"text:1"
    assert await cache.get("text") == b"text:2"


async def test_a_rendering_no_one_asks_for_is_let_go_after_its_interval() -> None:
    """The renderings are held only while they may be served: once `reuse_s` has passed
    without a new one, the cache holds none (at 10,000 targets `status --json` is ~7 MB,
    kept until the next request before)."""
    body = b"x" * 1_000_000

    async def render(key: str) -> bytes:
        return body

    cache: RenderCache[str] = RenderCache(render, reuse_s=0.05)
    held_before = sys.getrefcount(body)
    assert await cache.get("json") is body
    assert sys.getrefcount(body) == held_before + 1  # the cache holds it
    with anyio.fail_after(5):
        while sys.getrefcount(body) > held_before:  # noqa: ASYNC110 (no event to wait on)
            await anyio.sleep(0.01)


async def test_expiring_calls_once_after_the_last_touch() -> None:
    """`Expiring`: no call while touched within its interval, one call once it has passed
    since the last touch, and none more until touched again."""
    calls: list[float] = []
    expiring = Expiring(0.1, lambda: calls.append(anyio.current_time()))
    touches: list[float] = []
    for _ in range(5):  # touched every 0.05 s for 0.25 s (more apart on a loaded machine)
        expiring.touch()
        touches.append(anyio.current_time())
        await anyio.sleep(0.05)
    with anyio.fail_after(5):
        while not calls or calls[-1] < touches[-1]:  # noqa: ASYNC110 (no event is set)
            await anyio.sleep(0.01)
    for call in calls:  # each only once untouched for its interval (a late sleep may be one)
        assert call >= max(t for t in touches if t <= call) + 0.1 - 0.01
    settled = len(calls)
    await anyio.sleep(0.3)
    assert len(calls) == settled  # none more until touched again
    expiring.touch()
    with anyio.fail_after(5):
        while len(calls) <= settled:  # noqa: ASYNC110
            await anyio.sleep(0.01)
