"""No orphans, even from orchestrators that daemonize: end to end through the real binary.

The fake orchestrator's `daemonize` behaviour starts a daemon the classic way (fork,
`setsid()`, fork again, stdio on /dev/null), optionally scrubbing its environment (no
AUTOLOOPD_RUN marker) and ignoring SIGTERM. autoloopd is the child subreaper of its process
tree, so such a daemon is re-parented to it, and it is stopped (SIGTERM, grace, SIGKILL) and
reaped when its iteration ends, when the daemon shuts down, and, for one that kept its
marker, at the next start after autoloopd was SIGKILLed. Processes of iterations still
running are left alone. (A daemon that scrubbed its environment and outlived a SIGKILLed
autoloopd is re-parented to init: only systemd's cgroup, KillMode=mixed, catches that one.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoloop_daemon.runs.deathwatch import BOUND_S
from tests.helpers.daemon import Lab
from tests.helpers.fakes import orchestrator_cmd
from tests.helpers.hostile import run_one_target
from tests.helpers.logs import json_lines, read_log
from tests.helpers.process import marked_processes, pid_alive, start_autoloopd, stop
from tests.helpers.wait import wait_for

GRACE = ("--term-grace-seconds", "0.5")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER is Linux-only"
)


def _pids(pid_file: Path) -> list[int]:
    if not pid_file.exists():
        return []
    return [int(line) for line in pid_file.read_text().split()]


def _gone_and_reaped(pid: int) -> bool:
    """Not running and not a zombie waiting for its parent either: /proc has no entry."""
    return not Path(f"/proc/{pid}").exists()


@contextlib.contextmanager
def _cleanup(pid_file: Path) -> Iterator[None]:
    """Kill every daemon listed in `pid_file` after the test, whatever happened (a scrubbed
    one carries no marker for conftest.py to find)."""
    try:
        yield
    finally:
        for pid in _pids(pid_file):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("scrub", "trap"), [(True, True), (False, False)], ids=["scrubbed-traps-term", "marked"]
)
def test_daemonized_descendant_is_stopped_and_reaped_when_its_iteration_ends(
    tmp_path: Path, scrub: bool, trap: bool
) -> None:
    """After each iteration (the daemon idles in its cooldown), the daemon the orchestrator
    left is gone and reaped, even one without the run marker that ignores SIGTERM."""
    pid_file = tmp_path / "daemons.pid"
    root = tmp_path / "state"
    (tmp_path / "skill").mkdir()
    flags = ["--daemon-pid-file", str(pid_file)]
    flags += ["--scrub-env"] * scrub + ["--daemon-trap-term"] * trap
    out = tmp_path / "autoloopd.out"
    with _cleanup(pid_file):
        proc = start_autoloopd(
            ["--target", str(tmp_path / "skill"), "--state-root", str(root),
             "--orchestrator-cmd", orchestrator_cmd("daemonize", *flags),
             "--mode", "continuous", "--cooldown-minutes", "60", "--max-cost", "10",
             "--log-format", "json", *GRACE],
            out,
        )  # fmt: skip
        wait_for(lambda: len(read_log(root)) == 1, what="the first iteration")
        [pid] = _pids(pid_file)
        assert _gone_and_reaped(pid), f"daemon {pid} of iteration 1 survived it"
        events = json_lines(out.read_text())
        stopped = [e["pids"] for e in events if e["event"] == "leftover_processes_stopped"]
        assert stopped == [[pid]]
        assert proc.poll() is None  # autoloopd itself waits in its cooldown
        assert stop(proc, signal.SIGTERM) == 0
    assert read_log(root)[0]["status"] == "completed"


def test_a_hang_that_daemonizes_on_every_retry_leaves_no_orphans(tmp_path: Path) -> None:
    """The issue's case: a hanging orchestrator that daemonizes (scrubbed) on every retry
    used to leave three orphans within a minute; now each timed-out try takes its daemon
    with it, and the circuit breaker stops the target (exit 1)."""
    pid_file = tmp_path / "daemons.pid"
    cmd = orchestrator_cmd("daemonize-hang", "--scrub-env", "--daemon-pid-file", str(pid_file))
    with _cleanup(pid_file):
        done = run_one_target(
            tmp_path, tmp_path / "state", "--orchestrator-cmd", cmd,
            "--iteration-timeout-minutes", "0.01", "--max-consecutive-errors", "3",
            "--retry-backoff-seconds", "0.05", *GRACE,
        )  # fmt: skip
        assert done.returncode == 1, done.stdout + done.stderr
        pids = _pids(pid_file)
        assert len(pids) == 3
        assert [p for p in pids if not _gone_and_reaped(p)] == []
    assert [e["status"] for e in read_log(tmp_path / "state")] == ["failed"] * 3


def test_sigterm_stops_the_daemonized_descendants_of_running_iterations(tmp_path: Path) -> None:
    """`autoloopd --config` with two hanging orchestrators that daemonized (one scrubbed):
    one SIGTERM, and after the shutdown grace both orchestrators and both daemons are gone."""
    lab = Lab(tmp_path)
    pid_file = tmp_path / "daemons.pid"
    common = ("--daemon-pid-file", str(pid_file))
    lab.write(
        [
            lab.target("scrubbed", "daemonize-hang", *common, "--scrub-env"),
            lab.target("marked", "daemonize-hang", *common, "--daemon-trap-term"),
        ],
        daemon={"shutdown_grace_seconds": 0.5},
        defaults={"mode": "continuous", "term_grace_seconds": 0.5},
    )
    with _cleanup(pid_file):
        daemon = lab.start()
        wait_for(lambda: len(_pids(pid_file)) == 2, what="both daemons started")
        assert all(pid_alive(p) for p in _pids(pid_file))
        assert daemon.stop(signal.SIGTERM, timeout=30) == 0
        assert [p for p in _pids(pid_file) if pid_alive(p)] == []
    lab.check_state_roots()


def test_a_sweep_spares_the_processes_of_iterations_still_running(tmp_path: Path) -> None:
    """Target `quick` finishes iterations (each leaves a scrubbed daemon, swept) while
    target `long` is still running with its own marked daemon, adopted by autoloopd too:
    `long`'s daemon is left alone until its own iteration is stopped."""
    lab = Lab(tmp_path)
    quick_pids, long_pids = tmp_path / "quick.pid", tmp_path / "long.pid"
    lab.write(
        [
            lab.target("long", "daemonize-hang", "--daemon-pid-file", str(long_pids)),
            lab.target(
                "quick", "daemonize", "--daemon-pid-file", str(quick_pids), "--scrub-env",
                max_iterations=3,
            ),
        ],
        daemon={"shutdown_grace_seconds": 0.5, "max_concurrent_iterations": 2},
        defaults={"mode": "single-run", "term_grace_seconds": 0.5},
    )  # fmt: skip
    with _cleanup(quick_pids), _cleanup(long_pids):
        daemon = lab.start()
        wait_for(lambda: len(_pids(long_pids)) == 1, what="long's daemon")
        daemon.wait_event("target_stopped", target="quick")
        [long_daemon] = _pids(long_pids)
        assert pid_alive(long_daemon), "a sweep stopped a running iteration's process"
        assert len(_pids(quick_pids)) == 3
        assert [p for p in _pids(quick_pids) if not _gone_and_reaped(p)] == []
        assert daemon.stop(signal.SIGTERM, timeout=30) == 0
        assert not pid_alive(long_daemon)
    lab.check_state_roots()


def test_sigkill_of_the_daemon_alone_kills_its_runs_within_the_bound(tmp_path: Path) -> None:
    """autoloopd is SIGKILLed (alone: the OOM killer's case) while its orchestrator hangs
    next to a daemon it started with setsid() (which kept its environment). The death watch
    (runs/deathwatch.py) kills both within its bound, not only the orchestrator's group;
    the restart then records the iteration as interrupted and finds nothing left to stop."""
    pid_file = tmp_path / "daemons.pid"
    root = tmp_path / "state"
    (tmp_path / "skill").mkdir()

    def args(timeout_minutes: str) -> list[str]:
        return [
            "--orchestrator-cmd",
            orchestrator_cmd("daemonize-hang", "--daemon-pid-file", str(pid_file)),
            "--max-iterations", "1", "--iteration-timeout-minutes", timeout_minutes,
            "--log-format", "json", "--retry-backoff-seconds", "0.05", *GRACE,
        ]  # fmt: skip

    with _cleanup(pid_file):
        # The first daemon's run must still hang when it is killed: a 1.2 s timeout.
        first = ["--target", str(tmp_path / "skill"), "--state-root", str(root), *args("0.02")]
        proc = start_autoloopd(first, tmp_path / "first.out")
        wait_for(lambda: len(_pids(pid_file)) == 1, what="the daemon of iteration 1")
        marked = marked_processes(str(root.resolve()))
        assert len(marked) == 2  # the orchestrator and its setsid() daemon
        assert stop(proc, signal.SIGKILL) == -signal.SIGKILL
        # BOUND_S is the promise; the wait allows for this shared, loaded machine.
        wait_for(
            lambda: not any(pid_alive(p) for p in marked),
            timeout=5 * BOUND_S,
            what="the killed daemon's runs to die",
        )
        done = run_one_target(tmp_path, root, *args("0.005"))
        assert marked_processes(str(root.resolve())) == []
        assert "interrupted_iteration_recorded" in done.stderr
        assert "earlier_run_processes_stopped" not in done.stderr
    assert read_log(root)[0]["status"] == "interrupted"


def test_restart_after_an_unclean_stop_stops_processes_of_earlier_runs(tmp_path: Path) -> None:
    """A process still carrying the marker of an iteration that finished long ago (a helper
    an older autoloopd never swept) is stopped at the next start after an unclean stop (the
    lock file still names the dead owner); a clean stop leaves no such process to look for."""
    root = tmp_path / "state"
    assert run_one_target(tmp_path, root, "--max-iterations", "1").returncode == 0
    env = {**os.environ, "AUTOLOOPD_RUN": f"{root.resolve()}#1"}
    helper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(3600)"],
        env=env,
        start_new_session=True,
    )
    try:
        (root / ".autoloopd.lock").write_text("999999\n")  # what a SIGKILLed owner leaves
        done = run_one_target(tmp_path, root, "--max-iterations", "2", "--log-level", "info")
        assert done.returncode == 0, done.stderr
        events = json_lines(done.stderr)
        stopped = [e["pids"] for e in events if e["event"] == "earlier_run_processes_stopped"]
        assert stopped == [[helper.pid]]
        assert helper.wait(timeout=10) == -signal.SIGTERM
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()
