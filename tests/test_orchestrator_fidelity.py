"""Fidelity with the real improvement-orchestrator and the original script's output (issue 9),
end to end through the real binary with fake orchestrators that print exactly the real one's
lines."""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers.audit import check_clean, read_state
from tests.helpers.daemon import make_target
from tests.helpers.fakes import fake_cmd, orchestrator_cmd
from tests.helpers.logs import json_lines, read_log
from tests.helpers.process import run_autoloopd, start_autoloopd
from tests.helpers.wait import wait_for


def upstream_target(target: Path, state_root: Path, *extra: str) -> list[str]:
    """The one-target form with tests/fakes/upstream_orchestrator.py, called as the real
    orchestrator is (no --iteration), fast retries, no plateau stop, plus `extra`."""
    cmd = fake_cmd("upstream_orchestrator.py", "--target", "{target}",
                   "--state-root", "{state_root}", "--auto")  # fmt: skip
    return [
        "--target", str(target), "--state-root", str(state_root), "--orchestrator-cmd", cmd,
        "--retry-backoff-seconds", "0", "--plateau-window", "0", *extra,
    ]  # fmt: skip


REAL_DECISIONS = (
    "keep", "reject", "revert", "pending", "pending_promote", "no_candidates",
    "no_accepted_candidates",
)  # fmt: skip


def one_target(target: Path, state_root: Path, cmd: str, *extra: str) -> list[str]:
    """The one-target form with orchestrator `cmd`, fast retries, plus `extra`."""
    return [
        "--target", str(target), "--state-root", str(state_root), "--orchestrator-cmd", cmd,
        "--retry-backoff-seconds", "0", "--plateau-window", "100", "--oscillation-window", "0",
        *extra,
    ]  # fmt: skip


# --- 1. every decision word is a completed iteration -------------------------------------


def test_every_decision_word_of_the_real_orchestrator_is_a_completed_iteration(
    tmp_path: Path,
) -> None:
    """A `Pipeline Summary:` with each of the real orchestrator's seven words, then an unknown
    one: eight completed iterations recorded verbatim, exit 0, one warning for the unknown."""
    target, state_root = make_target(tmp_path)
    words = [*REAL_DECISIONS, "escalate_to_human"]
    cmd = orchestrator_cmd("summary", "--decisions", ",".join(words), "--no-change")
    done = run_autoloopd(
        one_target(target, state_root, cmd, "--max-iterations", str(len(words)),
                   "--log-format", "json", "--log-level", "info"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    entries = read_log(state_root)
    assert [e["status"] for e in entries] == ["completed"] * len(words)
    assert [e["decision"] for e in entries] == words
    for word in words:
        assert f"Decision: {word}  " in done.stdout
    warnings = [e for e in json_lines(done.stderr) if e.get("event") == "unknown_decision"]
    assert [w["decision"] for w in warnings] == ["escalate_to_human"]
    state = read_state(state_root)
    assert (state["status"], state["iterations_completed"]) == ("stopped_max_iter", len(words))
    check_clean(state_root)


def test_only_keep_against_reject_or_revert_oscillates(tmp_path: Path) -> None:
    """The real gate escalates what it cannot keep to pending_promote, so keep,
    pending_promote, keep, pending_promote, ... is a normal run: it goes on to
    max_iterations. keep, revert, keep, reject is the original's oscillation."""
    target, state_root = make_target(tmp_path)
    env = {"HOME": str(tmp_path), "FAKE_DECISIONS": "keep,pending_promote"}
    done = run_autoloopd(upstream_target(target, state_root, "--max-iterations", "6"), env=env)
    assert done.returncode == 0, done.stderr
    assert "oscillation" not in done.stdout
    state = read_state(state_root)
    assert (state["status"], state["iterations_completed"]) == ("stopped_max_iter", 6)
    assert [e["decision"] for e in read_log(state_root)] == ["keep", "pending_promote"] * 3

    other, other_root = make_target(tmp_path, "other")
    other_root = tmp_path / "other-state"
    env["FAKE_DECISIONS"] = "keep,revert,keep,reject"
    done = run_autoloopd(upstream_target(other, other_root, "--max-iterations", "6"), env=env)
    assert done.returncode == 0, done.stderr
    assert "Stopped: oscillation detected (keep-reject alternating pattern)" in done.stdout
    assert read_state(other_root)["iterations_completed"] == 4


# --- 2. the handoff never hides the orchestrator's own feedback --------------------------


def _feedback_home(home: Path) -> Path:
    """A session-feedback store under `home` with an old, a recent and an undated line."""
    store = home / ".claude/skills/session-feedback-analyzer/feedback-store"
    store.mkdir(parents=True)
    now = datetime.now(UTC)
    lines = [
        {"timestamp": (now - timedelta(days=40)).isoformat(), "note": "old"},
        {"timestamp": (now - timedelta(days=2)).isoformat(), "note": "recent"},
        {"note": "undated"},
    ]
    raw = store / "feedback.jsonl"
    raw.write_text("".join(json.dumps(line) + "\n" for line in lines) + "not json\n")
    return raw


def test_handoff_passes_what_the_orchestrator_would_have_discovered_once(
    tmp_path: Path,
) -> None:
    """Iteration 1 gets no --source, so the orchestrator discovers its feedback itself. From
    iteration 2 on it gets the handoff and the same sources it discovered, each once: the
    session store's last 30 days (a copy in the state root, never the raw feedback.jsonl
    nor a second copy of the recent lines), .improvement-memory/*.json and the skill's
    feedback directories as directories."""
    target, state_root = make_target(tmp_path)
    raw = _feedback_home(tmp_path / "home")
    (target / ".improvement-memory").mkdir()
    (target / ".improvement-memory" / "hot.json").write_text("{}")
    (target / "memory").mkdir()
    (target / "memory" / "notes.md").write_text("a note")
    (target / "learnings").mkdir()
    (target / "unrelated.txt").write_text("not a feedback source")
    record = tmp_path / "argv.jsonl"
    env = {"HOME": str(tmp_path / "home"), "FAKE_RECORD": str(record)}
    done = run_autoloopd(upstream_target(target, state_root, "--max-iterations", "3"), env=env)
    assert done.returncode == 0, done.stderr
    runs = [json.loads(line) for line in record.read_text().splitlines()]
    recent_by_orchestrator = str(raw.with_name("feedback-recent.jsonl"))
    ours = str(state_root.resolve() / "feedback" / "feedback-recent.jsonl")
    discovered = [
        str(target / ".improvement-memory" / "hot.json"),
        str(target / "learnings"),
        str(target / "memory"),
    ]
    assert runs[0]["given"] == []
    assert runs[0]["used"] == [recent_by_orchestrator, *discovered]
    for n, run in enumerate(runs[1:], start=2):
        handoff = str(state_root.resolve() / "handoffs" / f"iteration-{n - 1}.md")
        assert run["given"] == [handoff, ours, *discovered]
    assert Path(ours).read_text() == Path(recent_by_orchestrator).read_text()
    assert [json.loads(line)["note"] for line in Path(ours).read_text().splitlines()] == [
        "recent",
        "undated",
    ]


def test_an_empty_sources_list_passes_the_handoff_alone(tmp_path: Path) -> None:
    """`--sources ''` (sources = [] in a config) passes only the handoff."""
    target, state_root = make_target(tmp_path)
    (target / ".improvement-memory").mkdir()
    (target / ".improvement-memory" / "m.json").write_text("{}")
    record = tmp_path / "argv.jsonl"
    cmd = orchestrator_cmd("keep", "--record", str(record), "--scores", "0.5,0.6")
    done = run_autoloopd(one_target(target, state_root, cmd, "--max-iterations", "2",
                                    "--sources", ""))  # fmt: skip
    assert done.returncode == 0, done.stderr
    second = json.loads(record.read_text().splitlines()[1])
    assert second["source"] == [str(state_root.resolve() / "handoffs" / "iteration-1.md")]


# --- 3. the original's output and honest figures -----------------------------------------


def test_estimated_money_is_marked_estimated_everywhere(tmp_path: Path) -> None:
    """An orchestrator that reports no cost (as the real one): each log line says
    cost_source "estimated", the console and the summary mark the money with ~."""
    target, state_root = make_target(tmp_path)
    cmd = orchestrator_cmd("keep", "--no-cost", "--scores", "0.5,0.6")
    done = run_autoloopd(one_target(target, state_root, cmd, "--max-iterations", "2"))
    assert done.returncode == 0, done.stderr
    assert {e["cost_source"] for e in read_log(state_root)} == {"estimated"}
    assert "Cumulative cost: ~$" in done.stdout and "(estimated)" in done.stdout
    assert "  Total cost: ~$" in done.stdout
    state = read_state(state_root)
    assert state["estimated_cost_usd"] == pytest.approx(state["total_cost_usd"])


def test_reported_money_is_marked_reported(tmp_path: Path) -> None:
    """An orchestrator that reports cost_usd: cost_source "reported", no ~."""
    target, state_root = make_target(tmp_path)
    done = run_autoloopd(
        one_target(target, state_root, orchestrator_cmd("keep"), "--max-iterations", "1")
    )
    assert done.returncode == 0, done.stderr
    assert [e["cost_source"] for e in read_log(state_root)] == ["reported"]
    assert "~$" not in done.stdout


def test_continuous_mode_prints_the_cooldown_line_and_ctrl_c_prints_interrupted(
    tmp_path: Path,
) -> None:
    """Continuous mode: `  Cooling down {m}m (next: {ISO time})` before the cooldown; a
    Ctrl+C (SIGINT) prints `Interrupted by user` and the summary block."""
    target, state_root = make_target(tmp_path)
    out = tmp_path / "out.txt"
    proc = start_autoloopd(
        one_target(target, state_root, orchestrator_cmd("keep"), "--mode", "continuous",
                   "--cooldown-minutes", "30", "--max-cost", "5"),
        out,
    )  # fmt: skip
    wait_for(lambda: "Cooling down" in out.read_text(), timeout=30, what="the cooldown line")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    text = out.read_text()
    cooling = next(line for line in text.splitlines() if "Cooling down" in line)
    assert cooling.startswith("  Cooling down 30.0m (next: 20")
    assert "Interrupted by user" in text
    assert "=== Autoloop Summary ===" in text
    assert "  Status: stopped_signal" in text


def test_scheduled_mode_says_it_exits_after_one_iteration(tmp_path: Path) -> None:
    """`--mode scheduled` runs one iteration and says so, as the original did."""
    target, state_root = make_target(tmp_path)
    done = run_autoloopd(
        one_target(target, state_root, orchestrator_cmd("keep"), "--mode", "scheduled")
    )
    assert done.returncode == 0, done.stderr
    assert "  Scheduled mode: exiting after single iteration" in done.stdout
    assert len(read_log(state_root)) == 1


def test_missing_default_orchestrator_is_reported_at_once(tmp_path: Path) -> None:
    """Without --orchestrator-cmd and without the reference orchestrator installed, the
    one-target form says so at once (exit 78), naming the path and --orchestrator-cmd."""
    target, state_root = make_target(tmp_path)
    done = run_autoloopd(["--target", str(target), "--state-root", str(state_root)])
    assert done.returncode == 78
    assert "orchestrate.py does not exist" in done.stderr
    assert "--orchestrator-cmd" in done.stderr
    assert not state_root.exists()


def test_check_verifies_the_programs_the_config_points_at(tmp_path: Path) -> None:
    """`--check` (like nginx -t) fails with exit 78 when an orchestrator's program or script
    or a scorer's program does not exist, naming the key; passes when they do."""
    (tmp_path / "a").mkdir()
    missing = tmp_path / "nope.py"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "state"\n[[targets]]\nname = "a"\npath = "a"\n'
        f'orchestrator = ["{sys.executable}", "{missing}", "--target", "{{target}}"]\n'
        f'scorer = ["no-such-scorer-program-xyz"]\n'
    )
    done = run_autoloopd(["--config", str(config), "--check"])
    assert done.returncode == 78
    assert f"targets[0].orchestrator: the script {missing} does not exist" in done.stderr
    assert "targets[0].scorer[0]: 'no-such-scorer-program-xyz' is not on PATH" in done.stderr
    missing.write_text("print('ok')\n")
    config.write_text(config.read_text().replace('scorer = ["no-such-scorer-program-xyz"]\n', ""))
    assert run_autoloopd(["--config", str(config), "--check"]).returncode == 0


def test_plateau_window_0_disables_the_plateau_stop_on_the_command_line_too(
    tmp_path: Path,
) -> None:
    """`--plateau-window 0` means what `plateau_window = 0` means in a config: no plateau
    stop (flat scores run to max_iterations); a negative or huge window is refused, naming
    the flag."""
    target, state_root = make_target(tmp_path)
    cmd = orchestrator_cmd("keep", "--scores", "0.5")
    args = ["--target", str(target), "--state-root", str(state_root), "--orchestrator-cmd", cmd,
            "--max-iterations", "5", "--oscillation-window", "0"]  # fmt: skip
    done = run_autoloopd([*args, "--plateau-window", "0"])
    assert done.returncode == 0, done.stderr
    assert read_state(state_root)["status"] == "stopped_max_iter"
    assert len(read_log(state_root)) == 5
    config = tmp_path / "c.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "s"\n[[targets]]\nname = "a"\npath = "{target}"\n'
        f'plateau_window = 0\norchestrator = ["{sys.executable}", "-c", "pass"]\n'
    )
    assert run_autoloopd(["--config", str(config), "--check"]).returncode == 0
    for bad in ("-1", "1000001", "x"):
        refused = run_autoloopd([*args, "--plateau-window", bad])
        assert refused.returncode == 2
        assert "--plateau-window" in refused.stderr
    refused = run_autoloopd([*args, "--oscillation-window", "-3"])
    assert refused.returncode == 2 and "--oscillation-window" in refused.stderr


# --- 4. what a keep really changed -------------------------------------------------------


def test_a_keep_that_changed_nothing_is_marked_and_is_no_improvement(tmp_path: Path) -> None:
    """A keep whose target files are unchanged: `changed: false` in the log, shown on the
    console, and its (higher) score does not count as an improvement: a plateau."""
    target, state_root = make_target(tmp_path)
    (target / "SKILL.md").write_text("# skill\n")
    cmd = orchestrator_cmd("keep", "--no-change", "--scores", "0.5,0.6,0.7,0.8")
    done = run_autoloopd(
        ["--target", str(target), "--state-root", str(state_root), "--orchestrator-cmd", cmd,
         "--plateau-window", "2", "--max-iterations", "4"]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    entries = read_log(state_root)
    assert [e.get("changed") for e in entries] == [False, False, False]
    assert "(kept, but no file changed)" in done.stdout
    assert read_state(state_root)["status"] == "stopped_plateau"


def test_the_first_iterations_edit_is_seen_and_copied_to_best(tmp_path: Path) -> None:
    """The real orchestrator on a fixture edits the skill in its first run only: that run is
    `changed: true` (the target was hashed before it) and its version is copied to best/;
    later keeps that changed nothing are `changed: false` and leave best/ alone. After a
    restart with a state that lost its hash, the next run's edit is seen too."""
    target, state_root = make_target(tmp_path)
    (target / "SKILL.md").write_text("# skill\n")
    env = {"HOME": str(tmp_path), "FAKE_SCORES": "0.6,0.7,0.8"}
    done = run_autoloopd(upstream_target(target, state_root, "--max-iterations", "3"), env=env)
    assert done.returncode == 0, done.stderr
    assert [e.get("changed") for e in read_log(state_root)] == [True, False, False]
    state = read_state(state_root)
    assert state["best_copy_iteration"] == 1
    assert "candidate of run 1" in (state_root / "best" / "SKILL.md").read_text()

    path = state_root / "autoloop_state.json"
    path.write_text(json.dumps({**read_state(state_root), "content_hash": None}))
    env["FAKE_EDIT_RUNS"] = "4"
    more = upstream_target(target, state_root, "--max-iterations", "4")
    done = run_autoloopd(more, env=env)
    assert done.returncode == 0, done.stderr
    assert read_log(state_root)[-1]["changed"] is True
    assert read_state(state_root)["best_copy_iteration"] == 4


def test_a_no_op_keep_tells_one_story_in_state_summary_status_and_report(
    tmp_path: Path,
) -> None:
    """The real orchestrator edits the skill in run 1 only; run 2's keep reports 0.65 but
    changed nothing, so it counts as the best before it (0.50). The summary, the state's
    best and score_history, `status` and the report all say 0.5000, and the state and the
    report show the reported 0.65 beside it; the log keeps what was reported."""
    target, state_root = make_target(tmp_path)
    (target / "SKILL.md").write_text("# skill\n")
    env = {"HOME": str(tmp_path), "FAKE_SCORES": "0.5,0.65"}
    done = run_autoloopd(upstream_target(target, state_root, "--max-iterations", "2"), env=env)
    assert done.returncode == 0, done.stderr
    assert "  Best score: 0.5000 (iteration 1)" in done.stdout
    assert [e["weighted_score"] for e in read_log(state_root)] == [0.5, 0.65]
    state = read_state(state_root)
    assert (state["best_weighted_score"], state["best_iteration"]) == (0.5, 1)
    second = state["score_history"][1]
    assert (second["weighted_score"], second["reported_score"]) == (0.5, 0.65)
    assert "reported_score" not in state["score_history"][0]
    status = run_autoloopd(["status", "--state-root", str(state_root), "--json"])
    row = json.loads(status.stdout)["targets"][0]
    assert (row["best_weighted_score"], row["last_weighted_score"]) == (0.5, 0.5)
    report = run_autoloopd(
        ["report", "--state-root", str(state_root), "--output", "-", "--format", "md"]
    )
    assert report.returncode == 0, report.stderr
    assert "| 0.5000 (reported 0.6500; kept, no file changed) |" in report.stdout
    assert "0.6500 |" not in report.stdout.replace("(reported 0.6500", "")


def test_the_best_kept_version_is_copied_to_best(tmp_path: Path) -> None:
    """Keeps that change the target and reach a new best are copied to <state_root>/best
    (one copy, the newest best); the state records which iteration it is."""
    target, state_root = make_target(tmp_path)
    (target / "SKILL.md").write_text("# skill\n")
    (target / ".git").mkdir()
    (target / ".git" / "HEAD").write_text("ref")
    cmd = orchestrator_cmd("keep", "--scores", "0.5,0.7,0.6")
    done = run_autoloopd(one_target(target, state_root, cmd, "--max-iterations", "3"))
    assert done.returncode == 0, done.stderr
    state = read_state(state_root)
    assert state["best_copy_iteration"] == 2
    best = state_root / "best"
    assert best.is_symlink() and best.resolve().name == "best-iteration-2"
    assert (best / "SKILL.md").read_text() == "# skill\n"
    assert (best / "fake-kept.txt").read_text() == "iteration 1\niteration 2\n"
    assert not (best / ".git").exists()
    assert sorted(p.name for p in state_root.glob("best-iteration-*")) == ["best-iteration-2"]
    assert os.access(best, os.R_OK)
