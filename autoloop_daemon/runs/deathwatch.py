"""A dead daemon's runs do not outlive it: one watch process per daemon, tied by a pipe.

`start()` (cli/serve.py calls it once, before the first run) starts deathwatch_child.py in
a session of its own, with its stdin the read end of a pipe whose write end only this
process holds (close-on-exec: no orchestrator inherits it). Every run registers its
AUTOLOOPD_RUN marker before the spawn and its process group right after (`run_starting`,
`group_started`, `run_ended`). When the daemon dies -- SIGKILL, the OOM killer, a crash --
the kernel closes the pipe, the watch reads end of file and SIGKILLs every registered
group and every process still carrying a registered marker, then exits: within
`BOUND_S` of the daemon's death (it reacts at once; the bound is room for a loaded host).
This holds with systemd (whose KillMode=mixed would otherwise leave them to the final
SIGKILL, TimeoutStopSec later) and without it. A prctl(PR_SET_PDEATHSIG) would reach the
direct child only, and only when the forking *thread* ends.

The watch is a child of the daemon, registered with the reaper as one (never swept). If
it dies, the next registration notices (a broken pipe) and starts a new one with every
live registration replayed. In a process that never called `start` everything here is a
no-op (tests driving `run_in_group` directly, the benchmarks).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import structlog

from autoloop_daemon.runs import reaper

__all__ = ["BOUND_S", "group_ended", "group_started", "run_ended", "run_starting", "start"]

BOUND_S = 1.0  # a dead daemon's runs are gone this long after it (stated in the README)
_SCRIPT = Path(__file__).with_name("deathwatch_child.py")

_log = structlog.get_logger("autoloopd.deathwatch")


class _Watch:
    """The watch process, its pipe, and what is registered with it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.fd = -1
        self.markers: dict[str, int] = {}
        self.logs: dict[str, str] = {}  # a marker's run log, touched when its run is killed
        self.groups: dict[int, str] = {}
        self.ended: list[str] = []  # groups forgotten here, told to the watch with the next line

    def spawn(self) -> None:
        read_end, write_end = os.pipe()  # both close-on-exec (PEP 446)
        try:
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_SCRIPT)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # a Ctrl+C for the daemon's group does not reach it
            )
        finally:
            os.close(read_end)
        reaper.child_started(self.proc.pid)
        self.fd = write_end
        os.set_blocking(write_end, False)
        lines = [f"M {m}" for m, n in self.markers.items() for _ in range(n)]
        lines += [f"L {m}\t{path}" for m, path in self.logs.items()]
        lines += [f"G {g} {m}" for g, m in self.groups.items()]
        self.ended.clear()  # a new watch never heard of them
        if lines:
            self.send(lines)

    def send(self, lines: list[str]) -> None:
        if self.ended:
            lines, self.ended = [*self.ended, *lines], []
        data = "".join(f"{line}\n" for line in lines).encode()
        # A dead watch is found by the write (its end of the pipe closed when it died: EPIPE),
        # not by a waitpid before each write (four per run, issue 24).
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except BrokenPipeError:
            _log.warning("deathwatch_restarted", pid=self.proc.pid if self.proc else None)
            self._reap()
            self.spawn()  # replays everything registered, `lines` included
        except BlockingIOError:  # the watch is stopped and its pipe full: keep going
            _log.error("deathwatch_pipe_full", lost=len(lines))

    def _reap(self) -> None:
        os.close(self.fd)
        self.fd = -1
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=1.0)
            reaper.child_exited(self.proc.pid)


_watch: _Watch | None = None


def start() -> bool:
    """Start the watch (once per daemon); False where it cannot run (no /proc, no killpg)."""
    global _watch
    if _watch is not None:
        return True
    if not Path("/proc/self/environ").exists() or not hasattr(os, "killpg"):
        _log.warning("deathwatch_unavailable", hint="runs may outlive a killed daemon")
        return False
    watch = _Watch()
    try:
        watch.spawn()
    except OSError as exc:
        _log.warning("deathwatch_unavailable", error=str(exc))
        return False
    _watch = watch
    return True


def watching() -> bool:
    """Whether the watch runs (it sets a killed run's log mtime)."""
    return _watch is not None


def run_starting(marker: str | None, run_log: Path | None = None) -> None:
    """Register a run's marker before its spawn (a death in between still finds it), and
    its run log, whose modification time the watch sets when it kills the run."""
    if _watch is None or not marker or "\n" in marker:
        return
    _watch.markers[marker] = _watch.markers.get(marker, 0) + 1
    lines = [f"M {marker}"]
    path = None if run_log is None else str(run_log)
    if path is not None and "\t" not in marker and not any(c in path for c in "\n\t"):
        _watch.logs[marker] = path
        lines.append(f"L {marker}\t{path}")
    _watch.send(lines)


def group_started(pgid: int, marker: str | None) -> None:
    """Register a run's process group, right after the spawn."""
    if _watch is None:
        return
    marker = "" if marker is None or "\n" in marker else marker
    _watch.groups[pgid] = marker
    _watch.send([f"G {pgid} {marker}"])


def group_ended(pgid: int) -> None:
    """Forget a process group once it has been stopped and reaped.

    The watch is told with the run's next line (`run_ended`, right after the run's sweep):
    one write per run less. Until then a dead daemon's watch would SIGKILL that group id,
    which for those milliseconds is still the run's (the sweep is stopping what is left of
    the group) or nobody's: a pid is not reused that soon.
    """
    if _watch is None or _watch.groups.pop(pgid, None) is None:
        return
    _watch.ended.append(f"-G {pgid}")


def run_ended(marker: str | None) -> None:
    """Forget a run's marker once its sweep is over (and the groups ended before it)."""
    if _watch is None:
        return
    if not marker or marker not in _watch.markers:
        if _watch.ended:
            _watch.send([])
        return
    _watch.markers[marker] -= 1
    if _watch.markers[marker] <= 0:
        del _watch.markers[marker]
        _watch.logs.pop(marker, None)
    _watch.send([f"-M {marker}"])
