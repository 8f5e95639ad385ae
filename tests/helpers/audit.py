"""The one check of DESIGN.md's invariants on state roots, read straight from the files (not
through the daemon's own readers, so that it stays an independent check):

* the state file parses and the log is whole JSON lines, numbered 1..n;
* `total_cost_usd` equals the sum of the logged costs;
* `iterations_completed` equals the number of completed lines, plus the interrupted runs
  that crossed the shared or the target's cap (they count, as in the original script);
* once the daemon has exited (`settled`): no iteration is left in flight.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.logs import read_log
from tests.helpers.process import marked_processes
from tests.helpers.wait import wait_for

STATE_NAME = "autoloop_state.json"


def read_state(state_root: Path) -> dict[str, Any]:
    """The decoded autoloop_state.json."""
    data: dict[str, Any] = json.loads((state_root / STATE_NAME).read_text())
    return data


# The errors of runs stopped where they crossed a cap (policy/recording.py's words, written
# out here so that this check stays independent of the daemon's code).
CAP_CROSSINGS = (
    "stopped: its live cost would pass the shared budget's cap",
    "stopped: its live cost would pass the target's max_cost_usd",
)


def counted_iterations(entries: Iterable[dict[str, Any]]) -> int:
    """The runs that count as iterations: completed ones and the run that crossed a cap."""
    return sum(
        1
        for e in entries
        if e.get("status", "completed") == "completed"
        or (e.get("status") == "interrupted" and e.get("error") in CAP_CROSSINGS)
    )


def _violations(
    state: dict[str, Any], entries: list[dict[str, Any]], *, settled: bool
) -> list[str]:
    problems: list[str] = []
    numbers = [e["iteration"] for e in entries]
    if numbers != list(range(1, len(numbers) + 1)):
        problems.append(f"log iterations are not 1..n: {numbers}")
    total = math.fsum(e["cost_usd"] for e in entries)
    if not math.isclose(state["total_cost_usd"], total, abs_tol=1e-6):
        problems.append(f"total_cost_usd {state['total_cost_usd']} != logged sum {total}")
    completed = counted_iterations(entries)
    if state["iterations_completed"] != completed:
        problems.append(f"iterations_completed {state['iterations_completed']} != {completed}")
    if settled and state.get("in_flight") is not None:
        problems.append(f"in_flight left set: {state['in_flight']}")
    return problems


def invariant_violations(state_root: Path, *, settled: bool = False) -> list[str]:
    """DESIGN.md's invariants for one state root; an empty list when they all hold."""
    try:
        state = read_state(state_root)
    except (OSError, ValueError) as exc:
        return [f"state file does not parse: {exc}"]
    try:
        entries = read_log(state_root)
    except (AssertionError, ValueError) as exc:
        return [f"log does not parse: {exc}"]
    return _violations(state, entries, settled=settled)


def assert_invariants(state_root: Path) -> None:
    """Fail with every violated invariant of `state_root`."""
    problems = invariant_violations(state_root)
    assert not problems, f"{state_root}: " + "; ".join(problems)


def check_clean(state_root: Path) -> None:
    """DESIGN.md's invariants hold and no process of any run of `state_root` is left."""
    assert_invariants(state_root)
    assert marked_processes(str(state_root.resolve())) == []


def check_state_dir(state_dir: Path) -> None:
    """Invariants hold in every state root under `state_dir` that has a state file, and
    every orchestrator process of those roots is gone (within 10 s)."""
    roots = sorted(p for p in state_dir.iterdir() if p.is_dir())
    for root in roots:
        if (root / STATE_NAME).exists():
            assert_invariants(root)
    assert wait_for(
        lambda: not marked_processes(str(state_dir)),
        timeout=10.0,
        what="every orchestrator process to be gone",
    )


@dataclass
class Audit:
    """What the files of many state roots say, after the daemon has exited."""

    targets: int = 0
    log_lines: int = 0
    completed: int = 0
    failed: int = 0
    interrupted: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    per_target_completed: list[int] = field(default_factory=list)

    def add(self, root: Path, allowed_status: set[str] | None) -> None:
        """Check one state root and count what its files hold."""
        self.targets += 1
        try:
            state = read_state(root)
            entries = read_log(root)
        except (OSError, ValueError, AssertionError) as exc:
            self.problems.append(f"{root.name}: {exc}")
            return
        done = counted_iterations(entries)
        self.log_lines += len(entries)
        self.completed += done
        self.failed += sum(1 for e in entries if e.get("status") == "failed")
        self.interrupted += sum(1 for e in entries if e.get("status") == "interrupted")
        self.per_target_completed.append(done)
        status = str(state.get("status"))
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if allowed_status is not None and status not in allowed_status:
            self.problems.append(f"{root.name}: status {status}")
        self.problems += [f"{root.name}: {p}" for p in _violations(state, entries, settled=True)]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        per = self.per_target_completed
        return {
            "targets": self.targets,
            "log_lines": self.log_lines,
            "completed": self.completed,
            "failed": self.failed,
            "interrupted": self.interrupted,
            "statuses": self.statuses,
            "per_target_completed_min": min(per) if per else None,
            "per_target_completed_max": max(per) if per else None,
            "problems": self.problems[:20],
            "problem_count": len(self.problems),
        }


def audit_state_roots(roots: Iterable[Path], allowed_status: Iterable[str] | None = None) -> Audit:
    """Check every state root after the daemon exited: the invariants, nothing in flight,
    and (when given) a status among `allowed_status`."""
    allowed = set(allowed_status) if allowed_status is not None else None
    audit = Audit()
    for root in roots:
        audit.add(root, allowed)
    return audit
