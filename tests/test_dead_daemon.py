"""A dead daemon's rows are not live: after `kill -9` of the real daemon, `status` (text and
--json, exit 3) says first that no daemon runs and which pid died when, and a row the files
still call running is `interrupted`, with the iteration it was running and no clock."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from autoloop_daemon.cli.status_files import Absence, absence
from autoloop_daemon.clock import parse_iso
from autoloop_daemon.exit_codes import EXIT_NOT_RUNNING
from tests.helpers.daemon import Lab
from tests.helpers.process import run_autoloopd
from tests.helpers.wait import wait_for


def _in_flight(root: Path) -> dict[str, object] | None:
    try:
        state = json.loads((root / "autoloop_state.json").read_text())
    except (OSError, ValueError):
        return None
    in_flight: dict[str, object] | None = state.get("in_flight")
    return in_flight


def _status(lab: Lab, *extra: str) -> tuple[int, str]:
    done = run_autoloopd(["status", "--config", str(lab.config), *extra])
    assert done.stderr == "", done.stderr
    return done.returncode, done.stdout


def test_status_after_kill_9_shows_the_absence_first_and_the_rows_as_interrupted(
    tmp_path: Path,
) -> None:
    """kill -9 while alpha's iteration 1 hangs and beta is done: `status` exits 3, its first
    line is the daemon's absence naming the dead pid and its last write; alpha is
    `interrupted` ("was running iteration 1 when the daemon died at or after T; recovered at
    next start"), the same a second later (no clock); the restart recovers it, and after a
    clean stop nothing says "died"."""
    lab = Lab(tmp_path)
    lab.write(
        [lab.target("alpha", "hang"), lab.target("beta", "keep", max_iterations=1)],
        daemon={"exit_when_idle": False, "shutdown_grace_seconds": 1},
    )
    daemon = lab.start()
    daemon.wait_event("daemon_ready")
    wait_for(lambda: _in_flight(lab.state_root("alpha")), what="alpha's in-flight checkpoint")
    daemon.wait_event("target_stopped", target="beta")
    pid = daemon.pid
    daemon.send(signal.SIGKILL)
    assert daemon.wait() == -signal.SIGKILL
    killed_at = time.time()

    code, text = _status(lab)
    assert code == EXIT_NOT_RUNNING
    lines = text.splitlines()
    assert lines[0].startswith(f"daemon: not running (pid {pid} died at or after "), text
    assert "killed or crashed" in lines[0]
    assert lines[1].startswith("TARGET"), "the table comes after the absence"
    assert not any(line.startswith("daemon:") for line in lines[1:]), "said once, first"
    alpha = next(line for line in lines if line.startswith("alpha"))
    assert "interrupted" in alpha and "(#1 interrupted)" in alpha, alpha
    assert "was running iteration 1 when the daemon died at or after" in alpha
    assert "recovered at next start" in alpha
    assert not re.search(r"running \d", alpha), "no clock on a dead daemon's row"

    code, raw = _status(lab, "--json")
    assert code == EXIT_NOT_RUNNING
    report = json.loads(raw)
    d = report["daemon"]
    assert (d["running"], d["pid"], d["died_pid"]) == (False, None, pid)
    died = parse_iso(d["last_write_at"])
    assert died is not None and died.timestamp() <= killed_at
    rows = {r["target"]: r for r in report["targets"]}
    a = rows["alpha"]
    assert (a["status"], a["running_iteration"], a["running_for_s"]) == ("interrupted", 1, None)
    assert a["reason"] == (
        f"was running iteration 1 when the daemon died at or after {d['last_write_at']} "
        "(its last write); recovered at next start"
    )
    assert rows["beta"]["status"] == "stopped_max_iter", "a finished row stays as it is"

    # No clock counts on: a later second prints the same.
    wait_for(lambda: time.time() >= killed_at + 1.2, what="a later second")
    assert _status(lab)[1] == text

    restarted = lab.start()
    restarted.wait_event("daemon_ready")
    wait_for(
        lambda: (_in_flight(lab.state_root("alpha")) or {}).get("iteration") == 2,
        what="iteration 1 recovered and iteration 2 running",
    )
    log = (lab.state_root("alpha") / "iteration_log.jsonl").read_text().splitlines()
    first = json.loads(log[0])
    assert (first["iteration"], first["status"]) == (1, "interrupted")
    code, text = _status(lab)
    assert code == 0 and "interrupted" not in text.split("\n\n")[0]

    restarted.stop()
    code, raw = _status(lab, "--json")
    report = json.loads(raw)
    assert code == EXIT_NOT_RUNNING and report["daemon"]["died_pid"] is None
    assert all(r["status"] != "interrupted" for r in report["targets"])
    assert _status(lab)[1].startswith("daemon: not running (last known state from the files")


def test_what_a_lock_file_says_of_a_daemon_that_is_gone(tmp_path: Path) -> None:
    """A released lock (blanks), a huge or non-numeric marker and a lock file that is a FIFO
    name no dead daemon; a pid reused by a process that is no autoloopd (a `sleep`) does: the
    daemon that wrote it is gone. The last write is the newest state file's mtime."""
    root = tmp_path / "root"
    root.mkdir()
    lock = root / ".autoloopd.lock"
    for marker in ("      \n", "9" * 40 + "\n", "12ab\n", "-5\n"):
        lock.write_text(marker)
        assert absence([root], [root]) == Absence(None, None), marker
    lock.unlink()
    os.mkfifo(lock)
    assert absence([root], [root]).died_pid is None  # never opened in a way that blocks
    lock.unlink()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        lock.write_text(f"{sleeper.pid}\n")
        (root / "autoloop_state.json").write_text("{}")
        os.utime(root / "autoloop_state.json", (1_800_000_000.7, 1_800_000_000.7))
        gone = absence([root], [root])
        assert gone == Absence(sleeper.pid, "2027-01-15T08:00:00Z")
        assert gone.interrupted(16) == (
            "was running iteration 16 when the daemon died at or after "
            "2027-01-15T08:00:00Z (its last write); recovered at next start"
        )
    finally:
        sleeper.kill()
        sleeper.wait()
