"""bench/check.py measures issue 24's table: every figure, with its goal and its floor.

Only the plan is checked (`--plan` measures nothing): no timings are asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Issue 24's table: (figure, goal, whether the goal is a minimum, whether it is on the ratio).
ISSUE_TABLE = {
    "iteration": (1.2, False, True),
    "cpu_per_iteration": (1.5, False, False),
    "iterations_per_s": (600, True, False),
    "memory": (60, False, False),
    "ready_warm": (3.0, False, False),
    "sigterm_exit": (2.0, False, False),
    "status": (0.3, False, False),
}


def plan(*args: str) -> dict[str, Any]:
    """The plan `bench/check.py --plan ARGS` prints."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "check.py"), "--plan", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_every_figure_of_the_issue_has_its_goal_and_a_floor() -> None:
    """The figures are the issue's rows, in its order, each with its goal and a floor."""
    figures = plan()["figures"]
    assert [f["key"] for f in figures] == list(ISSUE_TABLE)
    for f in figures:
        goal, at_least, on_ratio = ISSUE_TABLE[f["key"]]
        assert (f["goal"], f["at_least"], f["on_ratio"]) == (goal, at_least, on_ratio), f
        assert f["floor"].strip(), f
        assert f["goal_text"].startswith(">=" if at_least else "<="), f


def test_every_figure_is_measured_by_one_part() -> None:
    """Each figure is produced by exactly one part of the run."""
    parts = plan()["parts"]
    measured = [key for keys in parts.values() for key in keys]
    assert sorted(measured) == sorted(ISSUE_TABLE)


def test_quick_is_smaller_and_both_take_at_least_three_rounds() -> None:
    """--quick runs the same figures at smaller sizes; both forms take >= 3 rounds each."""
    full, quick = plan()["sizes"], plan("--quick")["sizes"]
    assert full["fleet"] == 10_000
    assert quick["fleet"] < full["fleet"]
    assert full["busy_targets"] == quick["busy_targets"] == 1000  # the memory figure's N
    for sizes in (full, quick):
        assert sizes["rounds"] >= 3
        assert sizes["busy_runs"] * sizes["busy_windows"] >= 3
    assert plan("--rounds", "1")["sizes"]["rounds"] == 3
