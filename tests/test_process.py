"""Tests of autoloop_daemon.process and .procfs with real subprocesses of the fakes in tests/fakes/.

Every wait is on a condition under `anyio.fail_after` (or a deadline), never a bare sleep.
The async tests run under blockbuster (`no_blocking`): they call the /proc readers
(`pid_alive`, `group_alive`, `find_marked`) with `anyio.to_thread.run_sync`, as the daemon must.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from autoloop_daemon.models import TargetSpec
from autoloop_daemon.runs import leftovers
from autoloop_daemon.runs.orchestrator import run_marker
from autoloop_daemon.runs.process import ProcessOutcome, child_environment, run_in_group
from autoloop_daemon.runs.procfs import (
    RUN_MARKER_ENV,
    find_marked,
    group_alive,
    marked_processes,
    pid_alive,
    signal_group,
    still_marked,
    stop_group,
)
from autoloop_daemon.runs.results import parse_result, tail_text
from tests.helpers.fakes import fake_argv
from tests.helpers.process import read_pid
from tests.helpers.wait import wait_until


async def run_fake(
    tmp_path: Path,
    behaviour: str,
    *args: str,
    timeout_s: float = 20.0,
    term_grace_s: float = 2.0,
    env: dict[str, str] | None = None,
    on_started: Callable[[int], Awaitable[None]] | None = None,
    **kwargs: Any,
) -> ProcessOutcome:
    """Run the fake orchestrator with `behaviour` and log to tmp_path/runs/iteration-1.log."""
    return await run_in_group(
        fake_argv(behaviour, "--state-root", str(tmp_path), *args),
        cwd=tmp_path,
        env=env if env is not None else child_environment({}, f"test-{uuid.uuid4().hex}"),
        log_path=tmp_path / "runs" / "iteration-1.log",
        timeout_s=timeout_s,
        term_grace_s=term_grace_s,
        on_started=on_started,
        **kwargs,
    )


def log_of(tmp_path: Path) -> bytes:
    return (tmp_path / "runs" / "iteration-1.log").read_bytes()


# --- normal runs -------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_normal_exit_streams_both_outputs_to_log_and_tails(tmp_path: Path) -> None:
    """A child that exits 0 has its stdout and stderr in the log and in the tails."""
    started: list[int] = []

    async def on_started(pid: int) -> None:
        started.append(pid)

    outcome = await run_fake(tmp_path, "keep", "--stderr", "hello-stderr", on_started=on_started)

    assert (outcome.returncode, outcome.timed_out, outcome.killed) == (0, False, False)
    assert started == [outcome.pid]
    assert outcome.stderr_tail == b"hello-stderr\n"
    result = parse_result(tail_text(outcome.stdout_tail))
    assert result is not None
    assert result.decision == "keep"
    log = log_of(tmp_path)
    assert b"hello-stderr\n" in log
    assert outcome.stdout_tail in log
    assert 0 < outcome.duration_s < 10
    assert not await anyio.to_thread.run_sync(group_alive, outcome.pid)


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_run_log_is_appended_to(tmp_path: Path) -> None:
    """A second run with the same log path appends instead of truncating."""
    await run_fake(tmp_path, "keep", "--stderr", "first-run")
    await run_fake(tmp_path, "reject", "--stderr", "second-run")
    log = log_of(tmp_path)
    assert log.index(b"first-run") < log.index(b"second-run")
    assert b'"decision": "keep"' in log
    assert b'"decision": "reject"' in log


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_exit_code_and_stderr_of_a_crash(tmp_path: Path) -> None:
    """A crashing child's exit code and stderr tail are reported; nothing is killed."""
    outcome = await run_fake(tmp_path, "crash")
    assert (outcome.returncode, outcome.timed_out, outcome.killed) == (3, False, False)
    assert b"Pipeline error: boom" in outcome.stderr_tail


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_child_killed_by_a_signal_has_negative_returncode(tmp_path: Path) -> None:
    """A child that dies of SIGKILL reports -9, and autoloopd did not kill it."""
    outcome = await run_fake(tmp_path, "signal")
    assert outcome.returncode == -signal.SIGKILL
    assert not outcome.timed_out
    assert not outcome.killed


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_odd_output_is_captured_without_errors(tmp_path: Path) -> None:
    """Invalid UTF-8, random bytes and silence are all fine; a result after bad bytes is read."""
    outcome = await run_fake(tmp_path, "invalid-utf8")
    assert b"\xff\xfe" in outcome.stdout_tail
    result = parse_result(tail_text(outcome.stdout_tail))
    assert result is not None
    assert result.decision == "keep"

    outcome = await run_fake(tmp_path, "garbage", "--bytes", "20000")
    assert len(outcome.stdout_tail) == 20000
    assert parse_result(tail_text(outcome.stdout_tail)) is None

    outcome = await run_fake(tmp_path, "silent")
    assert (outcome.returncode, outcome.stdout_tail, outcome.stderr_tail) == (0, b"", b"")


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_fifty_megabytes_go_to_the_log_with_bounded_tails(tmp_path: Path) -> None:
    """50 MiB of stdout all reach the log while memory holds only the bounded tails."""
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcome = await run_fake(
        tmp_path,
        "megabytes",
        "--mb",
        "50",
        "--stderr-mb",
        "1",
        stdout_tail_bytes=1 << 20,
        stderr_tail_bytes=1 << 16,
    )
    rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kib

    assert outcome.returncode == 0
    assert len(outcome.stdout_tail) == 1 << 20
    assert len(outcome.stderr_tail) == 1 << 16
    result = parse_result(tail_text(outcome.stdout_tail))
    assert result is not None
    assert result.decision == "keep"
    log_size = (tmp_path / "runs" / "iteration-1.log").stat().st_size
    assert log_size >= 51 * (1 << 20)
    assert rss_growth_kib < 30 * 1024, f"peak RSS grew by {rss_growth_kib} KiB"


# --- timeouts and stray processes --------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_timeout_stops_a_hanging_child(tmp_path: Path) -> None:
    """A child that outlives timeout_s gets SIGTERM; the run reports timed_out promptly."""
    pid_file = tmp_path / "child.pid"
    t0 = time.monotonic()
    outcome = await run_fake(
        tmp_path, "hang", "--pid-file", str(pid_file), timeout_s=1.0, term_grace_s=1.0
    )
    elapsed = time.monotonic() - t0

    assert outcome.timed_out
    assert outcome.killed
    assert outcome.returncode == -signal.SIGTERM
    assert 0.9 <= elapsed < 4.0
    assert read_pid(pid_file) == outcome.pid
    assert not await anyio.to_thread.run_sync(pid_alive, outcome.pid)
    assert not await anyio.to_thread.run_sync(group_alive, outcome.pid)


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_sigterm_trapping_child_gets_sigkill_after_grace(tmp_path: Path) -> None:
    """A child ignoring SIGTERM is SIGKILLed after term_grace_s; its output meanwhile is logged."""
    ready = tmp_path / "ready"
    t0 = time.monotonic()
    outcome = await run_fake(
        tmp_path, "trap-term", "--ready-file", str(ready), timeout_s=1.5, term_grace_s=1.0
    )
    elapsed = time.monotonic() - t0

    assert ready.exists(), "the fake had not installed its SIGTERM handler in time"
    assert outcome.timed_out
    assert outcome.killed
    assert outcome.returncode == -signal.SIGKILL
    assert 2.4 <= elapsed < 6.0
    assert b"ignoring SIGTERM" in log_of(tmp_path)
    assert not await anyio.to_thread.run_sync(group_alive, outcome.pid)


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_grandchild_holding_stdout_does_not_block_the_run(tmp_path: Path) -> None:
    """When the child exits but a grandchild keeps stdout open, the run returns promptly,
    with the child's result, and the grandchild is killed."""
    grandchild_file = tmp_path / "grandchild.pid"
    t0 = time.monotonic()
    outcome = await run_fake(
        tmp_path, "grandchild", "--grandchild-pid-file", str(grandchild_file), timeout_s=30.0
    )
    elapsed = time.monotonic() - t0

    assert (outcome.returncode, outcome.timed_out, outcome.killed) == (0, False, True)
    assert elapsed < 5.0
    result = parse_result(tail_text(outcome.stdout_tail))
    assert result is not None
    assert result.decision == "keep"
    grandchild = read_pid(grandchild_file)
    # Already gone when run_in_group returns; it may linger as a zombie (PID 1 may not reap).
    # (/proc is read off the event loop, as the daemon does: blockbuster checks.)
    assert not await anyio.to_thread.run_sync(pid_alive, grandchild)
    assert not await anyio.to_thread.run_sync(group_alive, outcome.pid)


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_process_that_left_the_group_does_not_block_the_run(tmp_path: Path) -> None:
    """A grandchild that called setsid() escapes the group and keeps stdout open: the run
    still returns promptly with the child's result (only systemd's cgroup can catch it)."""
    marker = f"escape-{uuid.uuid4().hex}"
    grandchild_file = tmp_path / "grandchild.pid"
    t0 = time.monotonic()
    outcome = await run_fake(
        tmp_path,
        "grandchild",
        "--grandchild-setsid",
        "--sleep",
        "30",
        "--grandchild-pid-file",
        str(grandchild_file),
        env=child_environment({}, marker),
    )
    elapsed = time.monotonic() - t0
    escapee = read_pid(grandchild_file)
    try:
        assert (outcome.returncode, outcome.timed_out, outcome.killed) == (0, False, False)
        assert elapsed < 3.0
        result = parse_result(tail_text(outcome.stdout_tail))
        assert result is not None
        assert result.decision == "keep"
        # What a restarted daemon would find (read off the event loop, as the daemon does).
        assert await anyio.to_thread.run_sync(find_marked, marker) == [escapee]
    finally:
        if escapee in await anyio.to_thread.run_sync(find_marked, marker):
            os.kill(escapee, signal.SIGKILL)
        await wait_until(lambda: not pid_alive(escapee))


# --- cancellation from outside -----------------------------------------------------------


async def cancel_when_started(
    tmp_path: Path, behaviour: str, *args: str, ready: Path, term_grace_s: float
) -> tuple[int, bool, float]:
    """Run a fake, cancel it from outside once `ready` exists.

    Returns (pid, whether run_in_group re-raised the cancellation, seconds from cancel to end).
    """
    pids: list[int] = []
    reraised = False

    async def on_started(pid: int) -> None:
        pids.append(pid)

    async def runner() -> None:
        nonlocal reraised
        try:
            await run_fake(
                tmp_path,
                behaviour,
                *args,
                timeout_s=30.0,
                term_grace_s=term_grace_s,
                on_started=on_started,
            )
        except anyio.get_cancelled_exc_class():
            reraised = True
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner)
        await wait_until(ready.exists)
        t0 = time.monotonic()
        tg.cancel_scope.cancel()
    return pids[0], reraised, time.monotonic() - t0


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_outside_cancellation_stops_the_group_and_reraises(tmp_path: Path) -> None:
    """Cancelling the task stops the child's group (SIGTERM) and re-raises the cancellation."""
    ready = tmp_path / "ready"
    pid, reraised, elapsed = await cancel_when_started(
        tmp_path, "hang", "--ready-file", str(ready), ready=ready, term_grace_s=5.0
    )
    assert reraised
    assert elapsed < 3.0  # SIGTERM was enough: the grace period was not waited out
    assert not await anyio.to_thread.run_sync(pid_alive, pid)
    assert not await anyio.to_thread.run_sync(group_alive, pid)


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_outside_cancellation_escalates_to_sigkill(tmp_path: Path) -> None:
    """A SIGTERM-trapping child is SIGKILLed term_grace_s after an outside cancellation."""
    ready = tmp_path / "ready"
    pid, reraised, elapsed = await cancel_when_started(
        tmp_path, "trap-term", "--ready-file", str(ready), ready=ready, term_grace_s=0.5
    )
    assert reraised
    assert 0.4 <= elapsed < 4.0
    assert not await anyio.to_thread.run_sync(group_alive, pid)
    assert b"ignoring SIGTERM" in log_of(tmp_path)  # the pipes were read during the grace


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_on_started_failure_stops_the_child(tmp_path: Path) -> None:
    """If on_started raises, the group is stopped and that very error propagates."""
    pids: list[int] = []

    async def on_started(pid: int) -> None:
        pids.append(pid)
        raise RuntimeError("checkpoint failed")

    with pytest.raises(RuntimeError, match="checkpoint failed"):
        await run_fake(tmp_path, "hang", on_started=on_started, term_grace_s=1.0)
    assert not await anyio.to_thread.run_sync(group_alive, pids[0])


# --- environment, stdin, markers ---------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_child_sees_clean_environment_devnull_stdin_and_own_session(tmp_path: Path) -> None:
    """No systemd variables reach the child; it has the marker, /dev/null stdin, its own group."""
    base = {**os.environ, "NOTIFY_SOCKET": "/run/fake", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"}
    env = child_environment({"EXTRA_VAR": "x"}, "probe-marker", base=base)
    outcome = await run_fake(tmp_path, "probe", "--probe-env", "EXTRA_VAR", env=env)

    probe = json.loads(tail_text(outcome.stdout_tail).strip().splitlines()[-1])["probe"]
    assert probe["env"] == {
        "NOTIFY_SOCKET": None,
        "WATCHDOG_USEC": None,
        "WATCHDOG_PID": None,
        RUN_MARKER_ENV: "probe-marker",
        "EXTRA_VAR": "x",
    }
    assert probe["stdin"] == "/dev/null"
    assert probe["stdin_data"] == ""
    assert probe["pid"] == probe["pgid"] == probe["sid"] == outcome.pid
    assert probe["cwd"] == str(tmp_path)


def test_child_environment_drops_systemd_variables_and_marks() -> None:
    """extra is merged over base, systemd variables go even if extra sets them, marker last."""
    base = {"PATH": "/bin", "NOTIFY_SOCKET": "/x", RUN_MARKER_ENV: "old"}
    env = child_environment({"A": "1", "WATCHDOG_USEC": "5", RUN_MARKER_ENV: "evil"}, "m", base)
    assert env == {"PATH": "/bin", "A": "1", RUN_MARKER_ENV: "m"}
    assert base["NOTIFY_SOCKET"] == "/x"  # base is not modified
    assert "PATH" in child_environment({}, "m")  # default base: our environment
    with pytest.raises(ValueError):
        child_environment({}, "")


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_find_marked_finds_a_live_marked_process(tmp_path: Path) -> None:
    """find_marked lists the child carrying the marker while it runs, and not after."""
    marker = f"find-{uuid.uuid4().hex}"
    pids: list[int] = []
    found: list[int] = []

    async def on_started(pid: int) -> None:
        pids.append(pid)

    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: run_fake(
                tmp_path, "hang", env=child_environment({}, marker), on_started=on_started
            )
        )
        await wait_until(lambda: bool(pids) and pids[0] in find_marked(marker))
        found = await anyio.to_thread.run_sync(find_marked, marker)
        tg.cancel_scope.cancel()
    assert found == pids
    assert await anyio.to_thread.run_sync(find_marked, marker) == []


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_one_marker_scan_serves_the_recoveries_of_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`MarkedLeftovers`: the recoveries within SCAN_REUSE_S share one /proc scan (a restart
    at 10,000 targets made 10,000), and a pid is signalled only if it still carries the
    marker the scan saw (`still_marked`: a reused pid is left alone)."""
    spec = TargetSpec(name="t", path=tmp_path, state_root=tmp_path / "state")
    marker = run_marker(spec, 1)
    scans: list[dict[int, str]] = []

    def counted() -> dict[int, str]:
        scans.append(marked_processes())
        return scans[-1]

    monkeypatch.setattr(leftovers, "marked_processes", counted)
    pids: list[int] = []

    async def on_started(pid: int) -> None:
        pids.append(pid)

    found = await anyio.to_thread.run_sync(marked_processes)
    assert all(m is not None for m in found.values()) and os.getpid() not in found
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: run_fake(
                    tmp_path, "hang", env=child_environment({}, marker), on_started=on_started
                )
            )
            await wait_until(lambda: bool(pids) and pids[0] in find_marked(marker))
            assert await anyio.to_thread.run_sync(still_marked, {pids[0]: marker}) == pids
            reused = {pids[0]: marker + "0", 2**22 + 7: marker}  # another marker; no such pid
            assert await anyio.to_thread.run_sync(still_marked, reused) == []
            stopper = leftovers.MarkedLeftovers()
            assert await stopper.stop_run(spec, 2) == 0  # another run's marker: nothing
            assert await stopper.stop_run(spec, 1) == 1  # shares the first scan
            assert len(scans) == 1 and scans[0][pids[0]] == marker
            await wait_until(lambda: not pid_alive(pids[0]))
            tg.cancel_scope.cancel()


# --- argv and errors ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_missing_program_raises_oserror(tmp_path: Path) -> None:
    """A program that does not exist raises FileNotFoundError; no shell is involved."""
    with pytest.raises(FileNotFoundError):
        await run_in_group(
            [str(tmp_path / "no-such-program")],
            cwd=None,
            env=child_environment({}, "m"),
            log_path=tmp_path / "deep" / "runs" / "x.log",
            timeout_s=5,
            term_grace_s=1,
        )
    assert (tmp_path / "deep" / "runs").is_dir()


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_argv_must_be_a_list(tmp_path: Path) -> None:
    """A single command string is refused: argv is never given to a shell."""
    with pytest.raises(TypeError):
        await run_in_group(
            "echo hi",
            cwd=None,
            env={},
            log_path=tmp_path / "x.log",
            timeout_s=5,
            term_grace_s=1,
        )


# --- /proc helpers and signals -----------------------------------------------------------


def test_pid_alive_treats_a_zombie_as_gone() -> None:
    """An exited but unreaped child answers kill(pid, 0), yet pid_alive says it is gone."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 5.0
        while pid_alive(child.pid):
            assert time.monotonic() < deadline, "child did not exit"
            time.sleep(0.01)
        os.kill(child.pid, 0)  # still exists: a zombie
    finally:
        child.wait()
    assert not pid_alive(child.pid)
    assert pid_alive(os.getpid())
    assert not pid_alive(0)


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_stop_group_and_signal_group_on_a_gone_group() -> None:
    """Signalling a group that no longer exists is harmless and fast."""
    async with await anyio.open_process(
        [sys.executable, "-c", "pass"], stdin=subprocess.DEVNULL, start_new_session=True
    ) as child:
        await child.wait()
    assert not signal_group(child.pid, signal.SIGTERM)
    assert not await anyio.to_thread.run_sync(group_alive, child.pid)
    with anyio.fail_after(1):
        await stop_group(child.pid, grace_s=5.0)


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_stop_group_refuses_our_own_group_and_init() -> None:
    """stop_group and signal_group never signal pgid 0, 1 or the caller's own group."""
    for pgid in (0, 1, os.getpgrp()):
        with pytest.raises(ValueError):
            signal_group(pgid, 0)
        with pytest.raises(ValueError):
            await stop_group(pgid, grace_s=0.1)


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_stop_group_stops_a_group_and_extra_pids() -> None:
    """stop_group SIGTERMs the group and any extra pid outside it, and waits until gone."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    options: dict[str, Any] = {"stdin": subprocess.DEVNULL, "start_new_session": True}
    async with (
        await anyio.open_process(sleeper, **options) as leader,
        await anyio.open_process(sleeper, **options) as outsider,
    ):
        try:
            with anyio.fail_after(5):
                await stop_group(leader.pid, grace_s=2.0, extra_pids=[outsider.pid])
            assert not await anyio.to_thread.run_sync(group_alive, leader.pid)
            assert not await anyio.to_thread.run_sync(pid_alive, outsider.pid)
        except BaseException:
            # Killed here only when the test failed: `proc.kill()` polls first
            # (`Popen.send_signal`), and on a loaded machine that poll reaped the exited
            # outsider before asyncio's watcher thread did, which then reported 255.
            for proc in (leader, outsider):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            raise
        with anyio.fail_after(5):
            assert await leader.wait() == -signal.SIGTERM
            assert await outsider.wait() == -signal.SIGTERM
