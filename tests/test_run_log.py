"""The run log (runs/run_log.py): output gathered and written off the loop, at most `hold_s`
late, the rest written in the worker call that closes the log and runs the caller's
end-of-run work; a write that fails drops what follows without failing the run.

With real files and a real child process (`run_in_group` with the death watch said to be
running, so that output is held): a running child's line reaches its log while the child
still runs, and a short run's whole output is in the log once `run_in_group` returns.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import anyio
import pytest

from autoloop_daemon.runs import deathwatch, process
from autoloop_daemon.runs.process import child_environment, run_in_group
from autoloop_daemon.runs.run_log import FLUSH_BYTES, LogSink, open_run_log
from tests.helpers.wait import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.no_blocking]


def _read(path: Path) -> bytes:
    return path.read_bytes()


async def test_output_is_held_until_due_then_written_in_one_call(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "iteration-1.log"
    sink = LogSink(path, await anyio.to_thread.run_sync(open_run_log, path), hold_s=60.0)
    assert sink.due() is None
    await sink.add(b"one\n")
    due = sink.due()
    assert due is not None and due >= anyio.current_time() + 59
    await sink.add(b"two\n")
    assert await anyio.to_thread.run_sync(_read, path) == b""  # held
    await sink.flush()
    assert await anyio.to_thread.run_sync(_read, path) == b"one\ntwo\n"
    assert sink.due() is None
    await sink.add(b"x" * FLUSH_BYTES)  # a full buffer is written without waiting
    assert len(await anyio.to_thread.run_sync(_read, path)) == 8 + FLUSH_BYTES
    with anyio.CancelScope(shield=True):
        await sink.finish()


async def test_the_rest_is_written_and_closed_before_at_end_runs_off_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "iteration-1.log"
    fd = await anyio.to_thread.run_sync(open_run_log, path)
    sink = LogSink(path, fd, hold_s=60.0)
    await sink.add(b"the result line\n")
    seen: list[tuple[bytes, bool, int]] = []

    def at_end() -> None:
        closed = not os.path.exists(f"/proc/self/fd/{fd}") or os.readlink(
            f"/proc/self/fd/{fd}"
        ) != str(path)
        seen.append((path.read_bytes(), closed, threading.get_ident()))

    with anyio.CancelScope(shield=True):
        await sink.finish(at_end)
    assert seen == [(b"the result line\n", True, seen[0][2])]
    assert seen[0][2] != threading.get_ident()
    await sink.add(b"after the end\n")  # dropped: the log is closed
    assert await anyio.to_thread.run_sync(_read, path) == b"the result line\n"


async def test_a_failed_write_drops_the_rest_and_still_runs_at_end(tmp_path: Path) -> None:
    """/dev/full: every write fails with ENOSPC, as on a full disk."""
    fd = await anyio.to_thread.run_sync(os.open, "/dev/full", os.O_WRONLY)
    sink = LogSink(tmp_path / "full.log", fd, hold_s=0.0)
    await sink.add(b"lost\n")  # hold 0: written at once, and it fails
    await sink.add(b"dropped\n")
    assert sink.due() is None
    ended: list[bool] = []
    with anyio.CancelScope(shield=True):
        await sink.finish(lambda: ended.append(True))
    assert ended == [True]


_PRINT_THEN_WAIT = (
    "import os, sys, time\n"
    "print('first line', flush=True)\n"
    "deadline = time.monotonic() + 30\n"
    "while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:\n"
    "    time.sleep(0.01)\n"
    "print('last line', flush=True)\n"
)


async def test_a_running_childs_output_reaches_its_log_before_it_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deathwatch, "watching", lambda: True)  # output is held (FLUSH_S)
    log_path, go = tmp_path / "runs" / "iteration-1.log", tmp_path / "go"
    ended: list[bytes] = []

    async def run() -> process.ProcessOutcome:
        return await run_in_group(
            [sys.executable, "-c", _PRINT_THEN_WAIT, str(go)],
            cwd=None, env=child_environment({}, "test-run-log"), log_path=log_path,
            timeout_s=60, term_grace_s=1, at_end=lambda done: ended.append(
                log_path.read_bytes() if done.returncode == 0 else b"exit != 0"
            ),
        )  # fmt: skip

    outcomes: list[process.ProcessOutcome] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _collect(run, outcomes))
        # The child waits for `go`: the line reached the log while it ran.
        await wait_until(lambda: b"first line" in _read_or_empty(log_path), timeout_s=20)
        assert not outcomes
        await anyio.Path(go).touch()
    assert outcomes[0].returncode == 0
    assert ended == [b"first line\nlast line\n"]  # whole, when `at_end` ran
    assert await anyio.to_thread.run_sync(_read, log_path) == b"first line\nlast line\n"


async def _collect(run: object, into: list[process.ProcessOutcome]) -> None:
    into.append(await run())  # type: ignore[operator]


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


async def test_a_cancelled_run_writes_its_log_but_skips_at_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run cancelled from outside (a shutdown past its grace) still leaves its whole log;
    `at_end` (the content hash) is for runs that ended, and is not called."""
    monkeypatch.setattr(deathwatch, "watching", lambda: True)
    log_path = tmp_path / "iteration-1.log"
    ended: list[bool] = []
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:

            async def cancel_once_it_printed() -> None:
                await wait_until(lambda: b"first line" in _read_or_empty(log_path), 20)
                scope.cancel()

            tg.start_soon(cancel_once_it_printed)
            await run_in_group(
                [sys.executable, "-c", _PRINT_THEN_WAIT, str(tmp_path / "never")],
                cwd=None, env=child_environment({}, "test-run-log-cancel"), log_path=log_path,
                timeout_s=60, term_grace_s=1, at_end=lambda done: ended.append(True),
            )  # fmt: skip
    assert scope.cancelled_caught and ended == []
    assert (await anyio.to_thread.run_sync(_read, log_path)).startswith(b"first line\n")
