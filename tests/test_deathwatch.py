"""The death watch (runs/deathwatch.py) on its own: a small real "daemon" process starts
it, registers a process group of two sleepers (one of which left the group with setsid()
but carries the run's marker), has its watch killed once (it must come back with the
registrations replayed), and is then SIGKILLed: every sleeper dies."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoloop_daemon.runs.deathwatch import BOUND_S
from tests.helpers.process import pid_alive
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")

_DAEMON = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    from autoloop_daemon.runs import deathwatch
    assert deathwatch.start()
    marker = "run-under-test#1"
    deathwatch.run_starting(marker)
    env = {**os.environ, "AUTOLOOPD_RUN": marker}
    leader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                              env=env, start_new_session=True)
    escapee = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                               env=env, start_new_session=True)  # its own session: marker only
    deathwatch.group_started(leader.pid, marker)
    watch = deathwatch._watch.proc.pid
    os.kill(watch, signal.SIGKILL)  # the next registration starts a new watch, replayed
    while open(f"/proc/{watch}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)  # dead (a zombie until reaped): its end of the pipe is closed
    deathwatch.run_starting("another#1")
    print("PIDS", leader.pid, escapee.pid, watch, deathwatch._watch.proc.pid, flush=True)
    time.sleep(600)
    """
)


def test_a_killed_daemon_s_registered_runs_die_and_a_killed_watch_comes_back() -> None:
    with _script_daemon(_DAEMON) as (daemon, printed, owned):
        leader, escapee, first_watch, second_watch = printed
        owned += [leader, escapee, second_watch]  # not the first watch: dead, its pid free
        assert second_watch != first_watch and pid_alive(second_watch)
        assert pid_alive(leader) and pid_alive(escapee)
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=10)
        # BOUND_S is the promise (bench/chaos.py measures it); the wait allows for load.
        wait_for(lambda: not pid_alive(leader) and not pid_alive(escapee),
                 timeout=5 * BOUND_S, interval=0.005, what="the runs to die")  # fmt: skip
        wait_for(lambda: not pid_alive(second_watch), timeout=10, what="the watch to exit")


@contextlib.contextmanager
def _script_daemon(
    script: str,
) -> Iterator[tuple[subprocess.Popen[str], list[int], list[int]]]:
    """Run `script` as a small "daemon": yields it, the pids of the line it prints first
    ("PIDS ..."; a restart's log line may come before it) and a list of the pids to SIGKILL,
    with it, at the end (the test's to fill)."""
    daemon = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    owned: list[int] = []
    try:
        assert daemon.stdout is not None
        line = daemon.stdout.readline()
        while line and not line.startswith("PIDS "):
            line = daemon.stdout.readline()
        yield daemon, [int(pid) for pid in line.split()[1:]], owned
    finally:
        for pid in [daemon.pid, *owned]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        daemon.wait(timeout=10)
        if daemon.stdout is not None:
            daemon.stdout.close()


_FORGETTING_DAEMON = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from autoloop_daemon.runs import deathwatch
    assert deathwatch.start()
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    ended = subprocess.Popen(sleeper, start_new_session=True)  # a run's group, then forgotten
    deathwatch.run_starting("ended#1")
    deathwatch.group_started(ended.pid, "ended#1")
    deathwatch.group_ended(ended.pid)  # told to the watch with the run's last line:
    deathwatch.run_ended("ended#1")
    live = subprocess.Popen(sleeper, start_new_session=True)  # still registered at the kill
    deathwatch.run_starting("live#1")
    deathwatch.group_started(live.pid, "live#1")
    unmarked = subprocess.Popen(sleeper, start_new_session=True)  # a run without a marker
    deathwatch.group_started(unmarked.pid, None)
    deathwatch.group_ended(unmarked.pid)
    deathwatch.run_ended(None)  # no marker: still tells the watch the group ended (last line)
    print("PIDS", ended.pid, unmarked.pid, live.pid, deathwatch._watch.proc.pid, flush=True)
    time.sleep(600)
    """
)


def test_a_group_forgotten_before_the_daemon_died_is_left_alone() -> None:
    """`group_ended` is told to the watch with `run_ended` (one write per run less): once a
    run is over, its group id (free for reuse by then) is never killed for it."""
    with _script_daemon(_FORGETTING_DAEMON) as (daemon, printed, owned):
        ended, unmarked, live, watch = printed
        owned += printed
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=10)
        wait_for(lambda: not pid_alive(live), timeout=5 * BOUND_S, interval=0.005,
                 what="the registered group to die")  # fmt: skip
        wait_for(lambda: not pid_alive(watch), timeout=10, what="the watch to exit")
        assert pid_alive(ended) and pid_alive(unmarked)  # the watch is gone: it never will
