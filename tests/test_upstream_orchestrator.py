"""The real improvement-orchestrator (lanyasheng/auto-improvement-orchestrator-skill) under
autoloopd, in its mock mode (`--eval-mock`: no model is called), on the upstream's own
fixture skill. Optional: it runs only when AUTOLOOPD_UPSTREAM_ORCHESTRATOR names a checkout
of that repository (nothing of it is copied here), and skips with that reason otherwise.
The review test also skips, saying why, when the checkout's gate never holds a candidate
back in mock mode (see its docstring).

    git clone https://github.com/lanyasheng/auto-improvement-orchestrator-skill /tmp/upstream
    AUTOLOOPD_UPSTREAM_ORCHESTRATOR=/tmp/upstream \
        .venv/bin/pytest --no-cov tests/test_upstream_orchestrator.py
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from autoloop_daemon.clock import now_utc
from autoloop_daemon.storage.files.review_files import pending_path, read_queue, read_verdicts
from tests.helpers.audit import check_clean, read_state
from tests.helpers.control import ctl
from tests.helpers.daemon import Lab
from tests.helpers.fakes import scorer_argv
from tests.helpers.logs import read_log
from tests.helpers.process import run_autoloopd
from tests.helpers.wait import wait_for

ENV = "AUTOLOOPD_UPSTREAM_ORCHESTRATOR"
ORCHESTRATE = Path("skills/improvement-orchestrator/scripts/orchestrate.py")
FIXTURE = Path("skills/benchmark-store/data/fixtures/level1-skill")


def _checkout() -> Path:
    root = os.environ.get(ENV)
    if not root:
        pytest.skip(f"{ENV} is not set (a checkout of the upstream orchestrator repository)")
    checkout = Path(root).expanduser().resolve()
    if not (checkout / ORCHESTRATE).is_file() or not (checkout / FIXTURE).is_dir():
        pytest.skip(f"{ENV}={root} holds no {ORCHESTRATE} and {FIXTURE}")
    return checkout


def test_the_real_orchestrator_in_mock_mode_runs_edits_once_and_is_kept(tmp_path: Path) -> None:
    """Three iterations of the real orchestrator on a copy of its level-1 fixture: each a
    completed `keep` read from its `Pipeline Summary:`; its first run edits the skill
    (changed, copied to best/), the later ones change nothing; from the second run on it is
    given the handoff with --source and does not fail on it; nothing is left running."""
    checkout = _checkout()
    target = tmp_path / "level1-skill"
    shutil.copytree(checkout / FIXTURE, target)
    before = (target / "SKILL.md").read_text()
    state_root = tmp_path / "state"
    cmd = shlex.join(
        [sys.executable, str(checkout / ORCHESTRATE), "--target", "{target}",
         "--state-root", "{state_root}", "--auto", "--eval-mock"]
    )  # fmt: skip
    done = run_autoloopd(
        ["--target", str(target), "--state-root", str(state_root), "--orchestrator-cmd", cmd,
         "--scorer-cmd", shlex.join(scorer_argv()), "--max-iterations", "3",
         "--plateau-window", "0", "--retry-backoff-seconds", "0"],
        env={"HOME": str(tmp_path)},
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    entries = read_log(state_root)
    assert [(e["status"], e["decision"]) for e in entries] == [("completed", "keep")] * 3
    assert [e.get("changed") for e in entries] == [True, False, False]
    edited = (target / "SKILL.md").read_text()
    assert edited != before
    state = read_state(state_root)
    assert (state["status"], state["best_copy_iteration"]) == ("stopped_max_iter", 1)
    assert (state_root / "best" / "SKILL.md").read_text() == edited
    assert "Final Decision: keep" in (state_root / "runs" / "iteration-3.log").read_text()
    check_clean(state_root)


def test_a_candidate_the_real_gate_holds_back_is_approved_through_ctl(tmp_path: Path) -> None:
    """The real orchestrator (mock mode) under a daemon, its target with `review_pause`,
    until its gate decides `pending_promote` and appends a real entry to
    `state/pending_promote.json`: `ctl review skill approve` (no id: the only one) records
    the verdict in the review log and the feedback record, and the loop counts it as a keep.

    Skipped, saying so, when three iterations pass without a held-back candidate: in the
    upstream checked when this test was written (10b5c2c), the orchestrator hands the gate
    only the candidates its discriminator accepted, which are exactly those the gate keeps
    (low-risk docs/reference/guardrail, executor support, no protected keyword), so its
    `pending_promote` branches need a model's proposals or a human-review layer firing on an
    accepted candidate, which mock mode never produces."""
    checkout = _checkout()
    lab = Lab(tmp_path)
    target = lab.skills / "level1-skill"
    shutil.copytree(checkout / FIXTURE, target)
    table = {
        "name": "skill", "path": str(target), "scorer": scorer_argv(),
        "orchestrator": [sys.executable, str(checkout / ORCHESTRATE), "--target", "{target}",
                         "--state-root", "{state_root}", "--auto", "--eval-mock"],
        "mode": "continuous", "cooldown_minutes": 0, "max_iterations": 3,
        "plateau_window": 0, "review_pause": True,
    }  # fmt: skip
    lab.write([table])
    daemon = lab.start(env={"HOME": str(tmp_path)})
    root = lab.state_root("skill")

    def held_or_ended() -> bool:
        return bool(read_queue(root, now_utc()).entries) or not daemon.running()

    try:
        wait_for(held_or_ended, timeout=600, what="a held-back candidate or the daemon's end")
        entries = read_queue(root, now_utc()).entries
        if not entries:
            decisions = [e["decision"] for e in read_log(root)]
            pytest.skip(
                f"the real gate held nothing back in {len(decisions)} iterations ({decisions}): "
                "this upstream only gates candidates its discriminator accepted"
            )
        (entry,) = entries
        assert pending_path(root).is_file()
        done = ctl(lab.config, "review", "skill", "approve", "--note", "fine by me")
        assert done.returncode == 0, done.stdout + done.stderr
        (verdict,) = read_verdicts(root)
        assert (verdict["id"], verdict["verdict"]) == (entry.review_id, "approve")
        (record,) = (target / ".feedback").iterdir()
        assert "was approved by a reviewer: fine by me" in record.read_text()
        (counted,) = daemon.wait_event("review_applied", target="skill", timeout=60)
        assert counted["counts_as"] == "keep"
    finally:
        if daemon.running():
            daemon.stop(timeout=60)
