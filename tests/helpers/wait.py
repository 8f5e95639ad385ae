"""Waiting on a condition with a timeout: the only way tests and benchmarks wait."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread


class WaitTimeout(AssertionError):
    """A condition did not hold within its timeout (an AssertionError, so a test fails)."""


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20.0,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll `predicate` until it returns something truthy, and return that; raise
    `WaitTimeout` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


async def wait_until(
    predicate: Callable[[], Any], timeout_s: float = 5.0, interval_s: float = 0.02
) -> Any:
    """`wait_for` for async tests: `predicate` (files, /proc: blocking reads) runs in a worker
    thread, so the event loop never blocks; fails after `timeout_s` (anyio.fail_after)."""
    with anyio.fail_after(timeout_s):
        while True:
            value = await anyio.to_thread.run_sync(predicate)
            if value:
                return value
            await anyio.sleep(interval_s)
