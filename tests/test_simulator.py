"""The dry-run simulator: deterministic, rising then flat, so the default loop plateaus."""

from __future__ import annotations

from autoloop_daemon.policy.stops import is_plateau
from autoloop_daemon.runs.simulator import DIMENSIONS, baseline_score, simulate


def test_simulator_is_deterministic_per_seed_target_and_iteration() -> None:
    """The same inputs give the same run; another seed gives another run."""
    assert simulate(7, "skill", 3) == simulate(7, "skill", 3)
    assert simulate(7, "skill", 3) != simulate(8, "skill", 3)


def test_simulated_scores_rise_then_flatten_into_a_plateau() -> None:
    """Iteration 1 beats the baseline; with seed 0 the default window-3 plateau hits at 4."""
    runs = [simulate(0, "coding-standards", k) for k in range(1, 5)]
    assert runs[0].weighted_score > baseline_score(0, "coding-standards")
    assert runs[0].decision == "keep"
    assert is_plateau([r.weighted_score for r in runs], 3)


def test_simulated_run_is_well_formed() -> None:
    """Scores cover every dimension within 0..1, cost is positive, stdout holds a JSON result."""
    run = simulate(1, "t", 2)
    assert set(run.scores) == set(DIMENSIONS)
    assert all(0.0 <= v <= 1.0 for v in run.scores.values())
    assert run.cost_usd > 0
    assert run.decision in ("keep", "reject")
    assert '"decision"' in run.stdout("/t", "/s", 2).splitlines()[-1]
