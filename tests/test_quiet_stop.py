"""A resting fleet is stopped and restarted without a write per target (issue 24).

A SIGTERM to a daemon whose targets all cool down writes no state file: what each holds
already says when it runs next. A restart into that stored wait (from `cooldown`, or from
`stopped_signal` as written by a stop from a pause or a run) writes none either. Real
daemons, real signals; the proof is each state file's inode and mtime, untouched.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.helpers.audit import read_state
from tests.helpers.daemon import Daemon, Lab
from tests.helpers.process import status_json
from tests.helpers.wait import wait_for

COOLING = {
    "backoff_base_seconds": 0.1,
    "backoff_max_seconds": 0.2,
    "term_grace_seconds": 2.0,
    "iteration_timeout_minutes": 1.0,
    "mode": "continuous",
    "cooldown_minutes": 10,
}
NAMES = ("a", "b", "c")


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    """A test's directories (conftest.py kills any autoloopd the test left running)."""
    return Lab(tmp_path)


def stamps(lab: Lab) -> dict[str, tuple[int, int]]:
    """Each target's state file as (inode, mtime_ns): a replace or a write changes it."""
    out = {}
    for name in NAMES:
        st = (lab.state_root(name) / "autoloop_state.json").stat()
        out[name] = (st.st_ino, st.st_mtime_ns)
    return out


def _at_rest(state: dict[str, object]) -> bool:
    return state["status"] == "cooldown" and state["best_copy_iteration"] == 1


def start_cooling(lab: Lab) -> Daemon:
    """A daemon whose three `keep` targets each ran one iteration and now cool down."""
    lab.write([lab.target(name, "keep") for name in NAMES], defaults=COOLING)
    daemon = lab.start()
    daemon.wait_event("iteration_finished", count=len(NAMES))
    # Each first keep is then copied to best/ and the state saved once more with
    # best_copy_iteration: only after that save is the fleet at rest.
    wait_for(
        lambda: all(_at_rest(read_state(lab.state_root(n))) for n in NAMES),
        what="all in cooldown, best/ copied",
    )
    return daemon


def test_sigterm_to_a_cooling_fleet_writes_no_state_file(lab: Lab) -> None:
    """Every target cooling: SIGTERM exits 0, each reported stopped_signal, and no state
    file was replaced; each still says cooldown with its next_run_at."""
    daemon = start_cooling(lab)
    planned = {n: read_state(lab.state_root(n))["next_run_at"] for n in NAMES}
    before = stamps(lab)
    assert daemon.stop(signal.SIGTERM) == 0, daemon.text()[-3000:]
    assert stamps(lab) == before
    stopped = {e["target"]: e["status"] for e in daemon.events("target_stopped")}
    assert stopped == dict.fromkeys(NAMES, "stopped_signal")
    for name in NAMES:
        state = read_state(lab.state_root(name))
        assert (state["status"], state["next_run_at"]) == ("cooldown", planned[name])
        assert state["in_flight"] is None
    lab.check_state_roots()


def test_a_restart_into_the_stored_wait_rewrites_nothing(lab: Lab) -> None:
    """States that say `stopped_signal` (an older daemon's, or a stop from a run) and
    `cooldown`: a warm restart resumes each one's wait, starts no iteration, writes no
    state file, and its SIGTERM writes none either."""
    daemon = start_cooling(lab)
    assert daemon.stop(signal.SIGTERM) == 0
    older = lab.state_root("a") / "autoloop_state.json"
    state = json.loads(older.read_text())
    state["status"] = "stopped_signal"
    older.write_text(json.dumps(state, indent=2) + "\n")
    before = stamps(lab)

    again = lab.start()
    wait_for(
        lambda: [r["status"] for r in status_json(lab.config)] == ["cooldown"] * len(NAMES),
        what="every wait resumed",
    )
    assert stamps(lab) == before
    assert again.stop(signal.SIGTERM) == 0, again.text()[-3000:]
    assert stamps(lab) == before
    assert again.count("iteration_started") == 0
    assert read_state(lab.state_root("a"))["status"] == "stopped_signal"
    lab.check_state_roots()


def test_a_stop_from_a_run_still_writes_stopped_signal(lab: Lab) -> None:
    """Only a cooldown or a wait ends without a write: a target whose run is finishing
    when the SIGTERM comes (within the grace) is checkpointed as before."""
    lab.write([lab.target("a", "slow", "--sleep", "2")], defaults=COOLING)
    daemon = lab.start()
    daemon.wait_event("iteration_started")
    assert daemon.stop(signal.SIGTERM) == 0, daemon.text()[-3000:]
    assert read_state(lab.state_root("a"))["status"] == "stopped_signal"
    lab.check_state_roots()
