"""Awaiting one coroutine function for many items, at most a given number at once.

A task per item would do the same, but a waiting anyio task is not free: its handle, cancel
scope, event and coroutine frames come to ~3 kB, and what each one loads stays allocated
meanwhile. Preparing 1,000 targets at once set the daemon's peak memory ~2 MB above where
its running fleet settles (issue 24, bench/check.py's busy part).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def each_at_most(limit: int, items: Iterable[T], fn: Callable[[T], Awaitable[None]]) -> None:
    """`await fn(item)` for every item, in `limit` tasks that each take the next item until
    none is left. An exception cancels the others and is raised (in an exception group, as
    from any task group)."""
    todo = iter(items)

    async def take_next() -> None:
        for item in todo:
            await fn(item)

    async with anyio.create_task_group() as tg:
        for _ in range(max(1, limit)):
            tg.start_soon(take_next)
