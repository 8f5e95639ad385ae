"""One target row: the dataclass and its serialiser agree, and every reader words a stop the
same way (the daemon's runner, `status` without a daemon, the report)."""

from __future__ import annotations

import json
from pathlib import Path

from autoloop_daemon.cli.status_files import target_row
from autoloop_daemon.policy.stops import Limits, LoopView, stop_sentence
from autoloop_daemon.report.reader import read_target
from autoloop_daemon.target_row import ROW_FIELDS, TargetRow, row_json
from autoloop_daemon.target_state import InFlight, TargetState


def _state() -> TargetState:
    state = TargetState(
        target="/t", started_at=None, max_iterations=3, max_cost_usd=2.0, plateau_window=2,
        max_consecutive_errors=2, cooldown_minutes=0.0, iterations_completed=1,
        total_cost_usd=0.1234567891, consecutive_errors=2, status="error",
        last_failure_trace="\n  boom  \nmore", in_flight=InFlight(2, "2026-01-01T00:00:00+00:00"),
    )  # fmt: skip
    state.extra_iterations = 1
    return state


def test_the_row_type_and_its_serialiser_give_the_same_json() -> None:
    """`TargetRow.of(...).to_json()` is `row_json(...)`: the same keys, order and values."""
    live = {
        "name": "a", "phase": "stopped", "reason": None, "max_iterations": 4,
        "max_cost_usd": 2.0, "last_weighted_score": None, "running_for_s": 1.5,
        "state_location": "/s/a", "host": None,
    }  # fmt: skip
    data = row_json(_state(), **live)
    assert tuple(data) == ROW_FIELDS
    assert TargetRow.of(_state(), **live).to_json() == data
    assert (data["running_iteration"], data["last_error"], data["total_cost_usd"]) == (
        2, "boom", 0.123457,
    )  # fmt: skip


def test_status_without_a_daemon_and_the_report_word_a_stop_as_the_daemon(tmp_path: Path) -> None:
    """The circuit breaker's sentence is the daemon's in `status` from the files and the
    report (one function words every stop)."""
    state = _state()
    (tmp_path / "autoloop_state.json").write_text(json.dumps(state.to_json()))
    daemon = stop_sentence(
        "error", LoopView(1, 0.1234567891, (), ()), Limits(4, 2.0, 2),
        consecutive_errors=2, max_consecutive_errors=2, last_failure=state.last_failure_trace,
    )  # fmt: skip
    assert daemon == "consecutive_errors exceeded (2/2): circuit breaker tripped; last: boom"
    assert target_row("a", tmp_path)["reason"] == daemon
    assert read_target("a", tmp_path).reason == daemon
