"""The terminal's live view tells the truth: targets waiting for a concurrency slot are
`queued`, not running ("2 running, 2 waiting for a slot" with 2 slots), a stopped target
shows no next run, and at exit no stale frame of running iterations stays on the screen
(a real daemon on a real pty)."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from autoloop_daemon.engine.snapshot import BudgetSnapshot, FleetSnapshot
from autoloop_daemon.observers.live_view import render
from autoloop_daemon.target_row import TargetRow
from tests.helpers.daemon import Lab
from tests.helpers.notify import NotifyListener
from tests.helpers.pty_run import PtyRun

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def _row(name: str, phase: str, **values: Any) -> TargetRow:
    base: dict[str, Any] = {
        "target": name, "status": "running", "phase": phase, "reason": None,
        "iterations_completed": 1, "max_iterations": 5, "total_cost_usd": 0.1,
        "max_cost_usd": 1.0, "best_weighted_score": None, "last_weighted_score": None,
        "last_decision": None, "consecutive_errors": 0, "next_run_at": None,
        "running_iteration": None, "running_for_s": None, "state_location": f"/s/{name}",
    }  # fmt: skip
    return TargetRow(**{**base, **values})


def _text(snap: FleetSnapshot) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(render(snap, NOW))
    out = console.file.getvalue()
    assert isinstance(out, str)
    return out


def test_targets_waiting_for_a_slot_are_queued_not_running() -> None:
    """Two iterations run; one target between turns and one whose cooldown is over wait for
    the two slots: the footer says 2 running and 2 waiting for a slot, the rows `queued`; a
    stopped target with a stale next_run_at shows its reason, not a next run."""
    targets = (
        _row("a", "running", running_iteration=2, running_for_s=5.0),
        _row("b", "running", running_iteration=2, running_for_s=3.0),
        _row("c", "running"),
        _row("d", "cooldown", status="cooldown", next_run_at="2027-01-15T07:59:00Z"),
        _row("e", "cooldown", status="cooldown", next_run_at="2027-01-15T09:00:00Z"),
        _row("f", "stopped", status="stopped_max_iter", reason="max_iterations reached (5/5)",
             next_run_at="2027-01-15T09:00:00Z"),
    )  # fmt: skip
    budget = BudgetSnapshot(spent_usd=0.6, reserved_usd=0.2, cap_usd=10.0)
    snap = FleetSnapshot(1, "x", True, False, budget, targets, queued=2)
    text = _text(snap)
    assert "2 running, 2 waiting for a slot, 1 cooling down, 0 waiting, 1 stopped" in text
    assert snap.status_line(NOW).startswith("2 running, 2 waiting for a slot, 1 cooling down")
    rows = {line.split()[0]: line for line in text.splitlines() if line[:1] in "abcdef"}
    assert all(" queued " in rows[n] and "waiting for a free slot" in rows[n] for n in "cd")
    assert all(" running " in rows[n] and "running for" in rows[n] for n in "ab")
    assert "next run in" in rows["e"] and "queued" not in rows["e"]
    assert "next run" not in rows["f"] and rows["f"].rstrip().endswith(
        "max_iterations reached (5/5)"
    )
    # No target waits for a slot (queued 0): the instant between turns is not one.
    calm = FleetSnapshot(1, "x", True, False, budget, targets[2:3], queued=0)
    assert "1 running, 0 cooling down" in _text(calm) and "queued" not in _text(calm)


def test_on_a_terminal_four_targets_on_two_slots_and_no_stale_frame(tmp_path: Path) -> None:
    """A real daemon on a pty, 4 hanging targets and 2 slots: the view says "2 running, 2
    waiting for a slot"; after two Ctrl+C the last table printed is the final state, with
    no iteration "running for" and every target stopped."""
    lab = Lab(tmp_path)
    lab.write(
        [lab.target(n, "hang", mode="continuous") for n in ("t1", "t2", "t3", "t4")],
        daemon={"log_format": "auto", "max_concurrent_iterations": 2},
    )
    with PtyRun(["--config", str(lab.config)], lab.root) as run:
        run.wait_text("2 running, 2 waiting for a slot")
        assert "4 running" not in run.text()
        run.proc.send_signal(signal.SIGINT)
        run.wait_text("Stopping gracefully")
        run.proc.send_signal(signal.SIGINT)
        run.wait_text("Stopping now")
    assert run.close() == 0, run.text()[-3000:]
    final = run.text().rsplit("PHASE", 1)[1]  # the last table drawn: the final print
    assert "running for" not in final and "all targets stopped" in final, final
    assert final.count("stopped") >= 4, final


def test_systemd_status_counts_targets_waiting_for_a_slot_apart(tmp_path: Path) -> None:
    """The same fleet under $NOTIFY_SOCKET: STATUS= says "2 running, 2 waiting for a slot",
    as `systemctl status` shows it, and once slots are asked for never "4 running"."""
    lab = Lab(tmp_path)
    lab.write([lab.target(n, "hang", mode="continuous") for n in ("t1", "t2", "t3", "t4")],
              daemon={"max_concurrent_iterations": 2, "shutdown_grace_seconds": 1})  # fmt: skip
    with NotifyListener(lab.root) as listener:
        daemon = lab.start(env=listener.env)
        listener.wait_for(
            lambda m: any(
                "STATUS=2 running, 2 waiting for a slot, " in f for n in m for f in n.lines
            ),
            timeout=20,
            what="STATUS= with the 2 targets waiting for a slot apart",
        )
        daemon.stop()
        lines = [f for n in listener.messages() for f in n.lines if f.startswith("STATUS=")]
        first = next(i for i, f in enumerate(lines) if "waiting for a slot" in f)
        # Before it only the instant all four were starting (none had asked for a slot yet).
        later = lines[first:]
        assert not any(f.startswith(("STATUS=3 running", "STATUS=4 running")) for f in later), lines


def test_a_daemon_off_a_terminal_never_imports_rich() -> None:
    """rich (~5 MB with pygments) is for the live view only: neither the daemon's modules
    nor structlog (whose console renderer would use it for tracebacks) import it, nor
    greenlet (structlog's threadlocal would), and structlog's console renderer still
    formats an exception, as a plain traceback."""
    code = (
        "import sys, autoloop_daemon.cli.run, autoloop_daemon.cli.serve, structlog.dev\n"
        "assert not {'rich', 'pygments', 'greenlet'} & set(sys.modules), 'imported'\n"
        "try:\n"
        "    raise ValueError('boom')\n"
        "except ValueError:\n"
        "    line = structlog.dev.ConsoleRenderer(colors=False)(\n"
        "        None, 'error', {'event': 'failed', 'exc_info': sys.exc_info()})\n"
        "assert 'Traceback (most recent call last)' in line and 'ValueError: boom' in line\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
