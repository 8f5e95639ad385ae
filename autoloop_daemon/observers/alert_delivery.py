"""Delivering one alert: run a command with the JSON on stdin, or POST it to a URL.

Both run off the event loop's critical path (the alerter's own task): the command as a
child process in its own session under a timeout (argv, never a shell), the POST through
urllib in a worker thread. Each failed attempt is retried after a doubling backoff.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.to_thread

from autoloop_daemon import __version__
from autoloop_daemon.exceptions import AlertDeliveryError

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
_STDERR_TAIL = 300
# The daemon's own systemd channel is not the alert command's business.
_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one channel's delivery ended."""

    via: str  # "command" or "url"
    ok: bool
    attempts: int
    error: str | None = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def run_command(argv: tuple[str, ...], data: bytes, timeout_s: float) -> None:
    """Run `argv` with `data` on stdin; AlertDeliveryError on failure, timeout or exit != 0."""
    env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
    try:
        with anyio.fail_after(timeout_s):
            result = await anyio.run_process(
                list(argv),
                input=data,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                check=False,
                env=env,
                start_new_session=True,
            )
    except TimeoutError:
        raise AlertDeliveryError(f"{argv[0]}: no exit within {timeout_s:g} s") from None
    except OSError as exc:
        raise AlertDeliveryError(f"{argv[0]}: cannot start: {exc.strerror or exc}") from None
    if result.returncode != 0:
        tail = _one_line(result.stderr.decode("utf-8", "replace"))[-_STDERR_TAIL:]
        raise AlertDeliveryError(
            f"{argv[0]}: exit code {result.returncode}" + (f": {tail}" if tail else "")
        )


def _post_sync(url: str, data: bytes, timeout_s: float) -> None:
    request = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"autoloopd/{__version__}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read(64 * 1024)
    except urllib.error.HTTPError as exc:
        raise AlertDeliveryError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AlertDeliveryError(f"{url}: {_one_line(str(reason))}") from None


async def post_json(url: str, data: bytes, timeout_s: float) -> None:
    """POST `data` as JSON to `url`; AlertDeliveryError unless the answer is 2xx."""
    await anyio.to_thread.run_sync(_post_sync, url, data, timeout_s, abandon_on_cancel=True)


async def with_retries(via: str, attempt: Callable[[], Awaitable[None]], retries: int) -> Outcome:
    """Call `attempt` until it succeeds, at most `retries` + 1 times, backing off between."""
    error = ""
    for n in range(1, retries + 2):
        try:
            await attempt()
        except AlertDeliveryError as exc:
            error = str(exc)
            if n <= retries:
                await anyio.sleep(min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (n - 1)))
            continue
        return Outcome(via, True, n)
    return Outcome(via, False, retries + 1, error)
