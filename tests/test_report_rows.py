"""The daemon's `status --json` report with its rows kept between renderings
(control/report_rows.py): byte for byte the report made from scratch, rendering after
rendering, as rows change, come, go and gain review counts."""

from __future__ import annotations

import copy
import json
import math
import random
from typing import Any

import pytest

from autoloop_daemon.control import report_rows
from autoloop_daemon.control.report_rows import RowTexts
from autoloop_daemon.json_text import dumps_indented
from autoloop_daemon.status_report import from_daemon, with_queues
from autoloop_daemon.status_text import status_row
from autoloop_daemon.target_row import ROW_FIELDS

SOCKET = "/run/autoloopd/autoloopd.sock"


def target_row(name: str, **values: Any) -> dict[str, Any]:
    """A cooling target's `/api/status` row (row_json's keys, in order)."""
    row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
    row.update(
        target=name, status="cooldown", phase="waiting", iterations_completed=3,
        max_iterations=10, total_cost_usd=0.31, max_cost_usd=5.0, best_weighted_score=0.72,
        last_weighted_score=0.7, last_decision="keep", consecutive_errors=0,
        next_run_at="2026-12-07T18:00:00Z", state_location=f"/srv/state/{name}/autoloop_state.json",
        paused=False, estimated=False,
    )  # fmt: skip
    row.update(values)
    return row


def payload(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """`/api/status`'s answer around `rows`."""
    return {
        "daemon": {"running": True, "pid": 7, "started_at": "2026-12-07T16:00:00Z",
                   "uptime_s": 60.0, "ready": True, "shutting_down": False},
        "budget": {"spent_usd": 1.5, "reserved_usd": 0.0, "cap_usd": 10.0, "remaining_usd": 8.5},
        "targets": rows,
        **extra,
    }  # fmt: skip


def from_scratch(answer: dict[str, Any], queues: list[dict[str, Any]]) -> bytes:
    """The report as the client would make it from the same answer (status_report.py)."""
    report = with_queues(from_daemon(copy.deepcopy(answer), SOCKET), queues)
    return (dumps_indented(report) + "\n").encode()


def test_each_rendering_is_the_report_made_from_scratch_as_rows_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Renderings in a row over one `RowTexts`: unchanged rows, a changed field, a target
    added and one removed, rows in another order, review queues that come and go (with a
    problem), a running target's clock, then no target at all. Only the rows that changed
    are made again."""
    made: list[str] = []

    def counted(row: dict[str, Any], state_root: str) -> dict[str, Any]:
        made.append(row["target"])
        return status_row(row, state_root)

    monkeypatch.setattr(report_rows, "status_row", counted)
    texts = RowTexts()

    def render(answer: dict[str, Any], queues: list[dict[str, Any]]) -> list[str]:
        made.clear()
        assert texts.report_json(answer, SOCKET, queues) == from_scratch(answer, queues)
        return sorted(made)

    rows = [target_row(f"t{i}") for i in range(5)]
    assert render(payload(rows), []) == ["t0", "t1", "t2", "t3", "t4"]
    assert render(payload(rows), []) == []  # nothing changed
    rows[1] = target_row("t1", status="running", phase="running", running_for_s=1.5)
    assert render(payload(rows), []) == ["t1"]
    rows[1] = target_row("t1", status="running", phase="running", running_for_s=2.5)
    rows.append(target_row("t5", last_error="line one", reason="stopped"))
    del rows[0]
    assert render(payload(rows), []) == ["t1", "t5"]
    queues = [{"target": "t2", "pending": [{"id": "c1"}, {"id": "c2"}], "problem": None}]
    assert render(payload(rows), queues) == ["t2"]
    queues = [{"target": "t2", "pending": [], "problem": "queue.jsonl: line 3 is not JSON"}]
    assert render(payload(list(reversed(rows))), queues) == ["t2"]
    cluster = {"host": "a", "hosts": [{"host": "a"}]}
    assert render(payload(rows, cluster=cluster), []) == ["t2"]
    assert render(payload([]), []) == []
    assert render(payload(rows), []) == ["t1", "t2", "t3", "t4", "t5"]  # none kept
    texts.forget()  # what the status routes do after a minute without a rendering
    assert render(payload(rows), []) == ["t1", "t2", "t3", "t4", "t5"]


def test_values_that_json_writes_differently_are_not_taken_for_unchanged() -> None:
    """A row whose value changes between ones Python tells apart (None and 0, a number
    and a string, NaN, nested values, non-ASCII text) is made again."""
    texts = RowTexts()
    values: list[Any] = [None, 0, "0", math.nan, math.inf, [1, {"a": None}], {"k": [2]}, "é ✓"]
    for value in values:
        answer = payload([target_row("a", last_error=value), target_row("b")])
        assert texts.report_json(answer, SOCKET, []) == from_scratch(answer, []), value


def test_random_fleets_render_as_from_scratch() -> None:
    """200 renderings of a fleet of up to 40 targets whose rows and review counts change at
    random: each equals the report made from scratch."""
    rng = random.Random(24)
    texts = RowTexts()
    names = [f"t{i:02}" for i in range(40)]
    fleet = {n: target_row(n) for n in names}
    for _ in range(200):
        for name in rng.sample(names, rng.randint(0, 5)):
            fleet[name] = target_row(
                name,
                iterations_completed=rng.randint(0, 9),
                total_cost_usd=rng.choice([0.0, 0.5, 1.25]),
                paused=rng.random() < 0.2,
            )
        present = sorted(rng.sample(names, rng.randint(0, len(names))))
        queues = [
            {"target": n, "pending": [{"id": "c"}] * rng.randint(0, 3), "problem": None}
            for n in rng.sample(names, 3)
        ]
        answer = payload([fleet[n] for n in present])
        assert texts.report_json(answer, SOCKET, queues) == from_scratch(answer, queues)
        json.loads(texts.report_json(answer, SOCKET, queues))
