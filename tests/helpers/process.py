"""Running a real `autoloopd` (to completion or in the background), stopping it, and finding
the processes of a run in /proc."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

AUTOLOOPD = [sys.executable, "-m", "autoloop_daemon"]


class DidNotExit(AssertionError):
    """A process did not exit in time after a signal (it was SIGKILLed)."""


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for an autoloopd under test (no systemd variables, no AUTOLOOPD_*),
    with `extra` on top."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTOLOOPD_", "NOTIFY_SOCKET", "WATCHDOG_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_autoloopd(
    args: Sequence[str],
    *,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run autoloopd to completion (in `cwd`, where relative paths resolve) and capture its
    output."""
    return subprocess.run(
        [*AUTOLOOPD, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(env),
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        check=False,
    )


def status_json(config: Path, *, timeout: float = 120.0) -> list[dict[str, Any]]:
    """`autoloopd status --config CONFIG --json`: one row per target, read from its state
    file (what scripts read instead of the daemon's STATUS= text)."""
    done = run_autoloopd(["status", "--config", str(config), "--json"], timeout=timeout)
    if done.returncode not in (0, 1):  # 1: some state file is unreadable (its row says so)
        raise RuntimeError(f"autoloopd status exited {done.returncode}: {done.stderr.strip()}")
    rows: list[dict[str, Any]] = json.loads(done.stdout)["targets"]
    return rows


# Every background autoloopd started since the last `kill_leftovers`, so that a test's
# teardown (tests/conftest.py) can kill what a failed test left running.
_started: list[subprocess.Popen[bytes]] = []


def start_autoloopd(
    args: Sequence[str],
    out: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start autoloopd in the background with stdout+stderr going to the file `out`."""
    handle = out.open("wb")
    try:
        proc = subprocess.Popen(
            [*AUTOLOOPD, *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(env),
            cwd=cwd,
        )
    finally:
        handle.close()
    _started.append(proc)
    return proc


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL `proc` (by its own pid) if it still runs, and reap it."""
    if proc.poll() is None:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)


def kill_leftovers(run_prefix: str | None) -> None:
    """SIGKILL every autoloopd started since the last call that still runs, then every
    process whose run marker starts with `run_prefix` (when given)."""
    while _started:
        kill(_started.pop())
    if run_prefix is not None:
        for pid in marked_processes(run_prefix):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Send `sig` and wait for the exit code (SIGKILL and raise `DidNotExit` if it does not
    come within `timeout` seconds)."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        raise DidNotExit(f"autoloopd did not exit within {timeout} s of {sig}") from None


def read_pid(path: Path) -> int:
    """The pid a fake wrote to `path`."""
    return int(path.read_text())


# --------------------------------------------------------------------------- /proc


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name: [0] is the state (field 3),
    [1] the ppid, [11] utime, [12] stime, [19] the start time; None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 1 :].decode().split()


def proc_status_kb(pid: int) -> dict[str, int]:
    """The `Vm*` and `Rss*` lines of /proc/<pid>/status in kB ({} once the process is gone)."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key.startswith(("Vm", "Rss")) and rest.strip().endswith("kB"):
            with contextlib.suppress(ValueError):
                out[key] = int(rest.split()[0])
    return out


def pid_alive(pid: int) -> bool:
    """True when `pid` runs and is not a zombie (PITFALLS: kill(pid, 0) succeeds on one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def marked_processes(prefix: str) -> list[int]:
    """Live pids whose AUTOLOOPD_RUN marker starts with `prefix` (a state root path)."""
    found = []
    needle = f"AUTOLOOPD_RUN={prefix}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(item.startswith(needle) for item in environ.split(b"\0")) and pid_alive(
            int(entry.name)
        ):
            found.append(int(entry.name))
    return found
