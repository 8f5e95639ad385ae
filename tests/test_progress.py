"""Progress (O(1) per entry) agrees with state.reconcile (recomputed from the whole log)."""

from __future__ import annotations

import random

import pytest

from autoloop_daemon.models import LogEntry
from autoloop_daemon.policy.progress import Progress
from autoloop_daemon.storage.files.state_file import SCORE_HISTORY_LIMIT, loop_view, reconcile


def _random_log(rng: random.Random, n: int) -> list[LogEntry]:
    entries = []
    for i in range(1, n + 1):
        status = rng.choices(["completed", "failed", "interrupted"], [6, 2, 1])[0]
        scored = status == "completed" and rng.random() < 0.8
        scores = {"a": round(rng.random(), 3), "b": round(rng.random(), 3)} if scored else {}
        entries.append(
            LogEntry(
                iteration=i,
                started_at="2026-01-01T00:00:00Z",
                finished_at=f"t{i}",
                status=status,  # type: ignore[arg-type]
                decision=rng.choice(["keep", "reject", "revert"])
                if status == "completed"
                else None,
                weighted_score=None if not scored or rng.random() < 0.5 else round(rng.random(), 3),
                cost_usd=round(rng.random(), 4),
                duration_seconds=1.0,
                scores=scores,
            )
        )
    return entries


@pytest.mark.parametrize("seed", range(20))
def test_progress_matches_reconcile(seed: int) -> None:
    """For random logs, the incremental totals equal the ones recomputed from scratch."""
    rng = random.Random(seed)
    entries = _random_log(rng, rng.choice([0, 1, 5, 40, SCORE_HISTORY_LIMIT + 30]))
    weights = {"a": 2.0}
    min_improvement = rng.choice([0.0, 0.01])
    expected = reconcile({"in_flight": None}, entries, weights, min_improvement)
    progress = Progress.from_entries(entries, weights, min_improvement)
    got: dict[str, object] = {"in_flight": None}
    progress.apply_to(got)
    for key in (
        "iterations_completed",
        "score_history",
        "current_scores",
        "best_weighted_score",
        "last_decision",
        "consecutive_errors",
        "plateau_counter",
        "next_iteration",
    ):
        assert got[key] == expected[key], key
    assert got["total_cost_usd"] == pytest.approx(expected["total_cost_usd"], abs=1e-9)
    view = loop_view(entries, weights)
    assert progress.view().scores == view.scores
    assert progress.view().decisions == view.decisions
    assert progress.view().iterations_completed == view.iterations_completed
