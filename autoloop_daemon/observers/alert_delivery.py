"""Delivering one alert: run a command with the JSON on stdin, or POST it to a URL.

Both run off the event loop's critical path (the alerter's own task): the command as a
child process in its own session under a timeout (argv, never a shell), the POST through
urllib in a daemon thread under a deadline for the whole exchange. Each failed attempt is
retried after a doubling backoff.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import ByteSendStream, Process

from autoloop_daemon import __version__
from autoloop_daemon.exceptions import AlertDeliveryError
from autoloop_daemon.runs import reaper

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


async def _communicate(process: Process, data: bytes) -> tuple[int, bytes]:
    """Write `data` to the child's stdin (a child that exits without reading it is not an
    error here: its exit code says how it went), read its stderr, wait for its exit."""
    assert process.stdin is not None and process.stderr is not None
    stderr = bytearray()

    async def feed(stdin: ByteSendStream) -> None:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await stdin.send(data)
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await stdin.aclose()

    async with anyio.create_task_group() as tg:
        tg.start_soon(feed, process.stdin)
        async for chunk in process.stderr:
            stderr += chunk
            del stderr[: max(0, len(stderr) - 64 * _STDERR_TAIL)]
    return await process.wait(), bytes(stderr)


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def run_command(argv: tuple[str, ...], data: bytes, timeout_s: float) -> None:
    """Run `argv` with `data` on stdin; AlertDeliveryError on failure, timeout or exit != 0.

    The child is registered with the reaper while it runs, so that the sweep after a run's
    end (which stops every adopted process no running run owns) never takes it for a run's
    leftover: an alert command is stopped by its own timeout alone.
    """
    env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
    try:
        # No cancellation between fork and registering; no sweep's verdict either.
        with anyio.CancelScope(shield=True), reaper.spawning():
            process = await anyio.open_process(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
            reaper.child_started(process.pid)
    except OSError as exc:
        raise AlertDeliveryError(f"{argv[0]}: cannot start: {exc.strerror or exc}") from None
    try:
        with anyio.fail_after(timeout_s):
            returncode, stderr = await _communicate(process, data)
    except TimeoutError:
        raise AlertDeliveryError(f"{argv[0]}: no exit within {timeout_s:g} s") from None
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            await process.aclose()
        reaper.child_exited(process.pid)
    if returncode != 0:
        tail = _one_line(stderr.decode("utf-8", "replace"))[-_STDERR_TAIL:]
        raise AlertDeliveryError(
            f"{argv[0]}: exit code {returncode}" + (f": {tail}" if tail else "")
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
    """POST `data` as JSON to `url`; AlertDeliveryError unless a 2xx answer is complete
    within `timeout_s` in all (connect, send and answer together).

    urllib's timeout bounds each socket operation only: a server that trickles its answer
    a byte at a time would hold the attempt, and a worker thread the interpreter joins at
    exit, for ever. So the request runs in a daemon thread, abandoned at the deadline (its
    socket is closed by its own timeout, or with the process).
    """
    finished = anyio.Event()
    failure: list[BaseException | None] = []
    token = anyio.lowlevel.current_token()

    def post() -> None:
        try:
            _post_sync(url, data, timeout_s)
            failure.append(None)
        except AlertDeliveryError as exc:  # handed to the loop: raised there, not here
            failure.append(exc)
        except Exception as exc:  # http.client's BadStatusLine and friends are no OSError
            reason = _one_line(str(exc)) or type(exc).__name__
            failure.append(AlertDeliveryError(f"{url}: {reason}"))
        with contextlib.suppress(Exception):  # the loop may be gone: nobody waits any more
            anyio.from_thread.run_sync(finished.set, token=token)

    threading.Thread(target=post, name="autoloopd alert POST", daemon=True).start()
    with anyio.move_on_after(timeout_s):
        await finished.wait()
    if not failure:
        raise AlertDeliveryError(f"{url}: no complete answer within {timeout_s:g} s")
    if failure[0] is not None:
        raise failure[0]


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
