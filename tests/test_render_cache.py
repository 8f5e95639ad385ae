"""`RenderCache`: one rendering per key and interval shared by every client, a client that
arrives during a rendering waits for it, and a change (`drop`) is never hidden by a
rendering that began before it."""

from __future__ import annotations

import anyio
import pytest

from autoloop_daemon.control.render_cache import RenderCache

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
