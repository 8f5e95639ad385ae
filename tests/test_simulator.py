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


def test_the_fleet_world_is_seeded_and_keeps_by_a_noisy_gate() -> None:
    """A fleet-world run is a pure function of (seed, name, iteration); a keep moves the
    true score by the candidate's change, a reject leaves it; flat targets never gain."""
    from autoloop_daemon.runs import fleet_world
    from autoloop_daemon.runs.simulator import simulate_world

    assert simulate_world("fleet", 3, "t1", 4) == simulate_world("fleet", 3, "t1", 4)
    kinds = set()
    for i in range(60):
        world = fleet_world.world_target(5, f"t{i}")
        kinds.add(world.kind)
        steps = fleet_world.trajectory(5, f"t{i}", 10)
        for step in steps:
            if not step.kept:
                assert step.true_after == step.true_before
        if world.kind == "flat":
            assert steps[-1].true_after <= world.start + 1e-12
        assert 0.05 * 0.3 < steps[0].cost_usd < 3.0 * 4
    assert kinds == {"improving", "jumpy", "flat", "fragile"}
