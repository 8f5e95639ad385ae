"""The `--dry-run` orchestrator: deterministic decisions, scores, cost and duration.

Pure functions of (seed, target name, iteration), so a dry run can be replayed exactly and
resumed after a crash with the same numbers. The first iteration lifts the scores from a
baseline; later candidates mostly fall just short of the best, so the default loop
(`plateau_window` 3, five iterations) visibly stops on a plateau.

`simulation = "fleet"` selects the fleet world instead (runs/fleet_world.py): targets with
hidden true curves, noisy measurements and keep decisions, and lognormal costs, for
running a simulated fleet under the real daemon and for bench/policy.py.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from autoloop_daemon.runs import fleet_world

DIMENSIONS: tuple[str, ...] = ("accuracy", "coverage", "clarity", "consistency")


@dataclass(frozen=True, slots=True)
class SimulatedRun:
    """One simulated orchestrator run."""

    decision: str
    scores: dict[str, float]
    weighted_score: float
    cost_usd: float
    candidate_id: str

    def stdout(self, target: str, state_root: str, iteration: int) -> str:
        """What a real orchestrator would have printed: the text summary and a JSON result."""
        result = {
            "decision": self.decision,
            "candidate_id": self.candidate_id,
            "artifact_path": f"{state_root}/receipts/sim-{iteration:04d}.json",
            "attempts": 1,
            "scores": self.scores,
            "cost_usd": self.cost_usd,
        }
        return (
            f"[dry-run] simulated iteration {iteration} of {target}\n"
            "Pipeline Summary:\n"
            f"  Target: {target}\n"
            "  Attempts: 1/3\n"
            f"  Final Decision: {self.decision}\n"
            f"  Candidate: {self.candidate_id}\n"
            f"  Artifact: {result['artifact_path']}\n"
            f"{json.dumps(result)}\n"
        )

    def learner_json(self) -> str:
        """The scorer output improvement-learner would have written for this run."""
        return json.dumps({"final_scores": self.scores, "source": "autoloopd-simulator"}, indent=2)


def _rng(seed: int, target: str, iteration: int) -> random.Random:
    return random.Random(f"autoloopd-sim:{seed}:{target}:{iteration}")


def _candidate_score(seed: int, target: str, iteration: int) -> float:
    """The weighted score of the candidate proposed in `iteration` (>= 1)."""
    base = _rng(seed, target, 0)
    baseline = 0.50 + 0.10 * base.random()
    peak = baseline + 0.10 + 0.08 * base.random()
    if iteration == 1:
        return round(peak, 4)
    rng = _rng(seed, target, iteration)
    if rng.random() < 0.15:  # a rare, shrinking improvement
        return round(min(0.99, peak + 0.03 * 0.5 ** (iteration - 2)), 4)
    return round(max(0.0, peak - 0.002 - 0.03 * rng.random()), 4)


def baseline_score(seed: int, target: str) -> float:
    """The target's weighted score before its first iteration."""
    base = _rng(seed, target, 0)
    return round(0.50 + 0.10 * base.random(), 4)


def simulate(seed: int, target: str, iteration: int) -> SimulatedRun:
    """The simulated outcome of `iteration` (1-based) of `target`."""
    score = _candidate_score(seed, target, iteration)
    best_before = max(
        [baseline_score(seed, target)]
        + [_candidate_score(seed, target, k) for k in range(1, iteration)]
    )
    decision = "keep" if score > best_before else "reject"
    rng = _rng(seed, target, iteration)
    rng.random()  # keep the draw used above out of the offsets below
    offsets = [rng.uniform(-0.06, 0.06) for _ in DIMENSIONS[:-1]]
    offsets.append(-sum(offsets))  # equal weights: the mean stays `score`
    scores = {
        d: round(min(1.0, max(0.0, score + o)), 4) for d, o in zip(DIMENSIONS, offsets, strict=True)
    }
    weighted = round(sum(scores.values()) / len(scores), 4)
    cost = round(0.05 + 0.20 * rng.random(), 4)
    return SimulatedRun(
        decision=decision,
        scores=scores,
        weighted_score=weighted,
        cost_usd=cost,
        candidate_id=f"sim-{iteration:04d}-{target}",
    )


def simulate_fleet(seed: int, target: str, iteration: int) -> SimulatedRun:
    """Iteration `iteration` (1-based) of `target` in the fleet world `seed`."""
    world = fleet_world.world_target(seed, target)
    step = fleet_world.trajectory(seed, target, iteration)[-1]
    scores = fleet_world.dimension_scores(world, step.measured)
    return SimulatedRun(
        decision="keep" if step.kept else "reject",
        scores=scores,
        weighted_score=round(sum(scores.values()) / len(scores), 4),
        cost_usd=round(step.cost_usd, 6),
        candidate_id=f"sim-{iteration:04d}-{target}",
    )


def simulate_world(world: str, seed: int, target: str, iteration: int) -> SimulatedRun:
    """The simulated run of `world` ("classic" or "fleet")."""
    if world == "fleet":
        return simulate_fleet(seed, target, iteration)
    return simulate(seed, target, iteration)
