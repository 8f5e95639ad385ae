"""The simulator's fleet world (`simulation = "fleet"`): targets with hidden true curves.

Each target of a world (seed, name) has a start score, a latent ceiling, a success
probability and step size, a measurement noise, a regression size and a mean cost; 60 % of
targets improve steadily, 15 % are jumpy (rare, large steps), 15 % flat (no headroom at all)
and 10 % fragile (large regressions). One iteration of a target whose true score is `cur`:
with probability p the change gains `f * (ceiling - cur)` (f ~ Beta), else it changes nothing
(40 %) or regresses by `|N(0, bad)|`; the orchestrator *measures* the candidate with noise
and keeps it iff the measurement beats the best measured so far (a noisy keep decision: a
kept bad change is a real regression). Its cost is the mean cost x LogNormal(0, 0.25).

Everything is a pure function of (seed, name, iteration): iteration k replays the draws of
iterations 1..k-1 (cached), so a run is deterministic, resumable and comparable across
allocation policies (the benchmark's worlds are paired).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

TOP = 0.97
DIMENSIONS: tuple[str, ...] = ("accuracy", "coverage", "clarity", "consistency")
_CACHE_LIMIT = 20_000  # trajectories kept (a bench world has 20 targets)


@dataclass(frozen=True, slots=True)
class WorldTarget:
    """The hidden truth of one target."""

    kind: str  # improving | jumpy | flat | fragile
    start: float
    ceiling: float
    p_success: float
    f_alpha: float
    f_beta: float
    bad: float  # the regression scale of a failed change
    noise: float  # the judge's measurement noise (sigma)
    mean_cost_usd: float
    offsets: tuple[float, ...]  # per-dimension offsets from the weighted score (mean 0)

    def expected_gain(self, cur: float) -> float:
        """The true expected change of one iteration from true score `cur` (keep ignored)."""
        f_mean = self.f_alpha / (self.f_alpha + self.f_beta)
        up = self.p_success * f_mean * max(0.0, self.ceiling - cur)
        down = (1 - self.p_success) * 0.6 * self.bad * math.sqrt(2 / math.pi)
        return up - down


@dataclass(frozen=True, slots=True)
class WorldStep:
    """One iteration: the true score before and after, what was measured, kept, paid."""

    true_before: float
    true_after: float
    measured: float
    kept: bool
    cost_usd: float


@lru_cache(maxsize=_CACHE_LIMIT)
def world_target(seed: int, name: str) -> WorldTarget:
    """The hidden parameters of target `name` in world `seed`."""
    rng = random.Random(f"autoloopd-fleet:{seed}:{name}")
    u = rng.random()
    kind = "improving" if u < 0.60 else "jumpy" if u < 0.75 else "flat" if u < 0.90 else "fragile"
    start = rng.uniform(0.45, 0.85)
    ceiling = start + rng.uniform(0.2, 0.8) * (TOP - start)
    p, fa, fb, bad = rng.uniform(0.4, 0.8), 2.0, 2.0, 0.01
    if kind == "jumpy":
        p, fa, fb = rng.uniform(0.08, 0.2), 5.0, 2.0
    elif kind == "flat":
        ceiling = start
    elif kind == "fragile":
        bad = rng.uniform(0.03, 0.08)
    noise = math.exp(rng.uniform(math.log(0.005), math.log(0.04)))
    cost = min(3.0, max(0.05, 0.5 * math.exp(rng.gauss(0.0, 0.8))))
    raw = [rng.uniform(-0.08, 0.08) for _ in DIMENSIONS]
    mean = sum(raw) / len(raw)
    offsets = tuple(round(r - mean, 6) for r in raw)
    return WorldTarget(kind, start, ceiling, p, fa, fb, bad, noise, cost, offsets)


_TRAJECTORIES: dict[tuple[int, str], tuple[list[WorldStep], list[float]]] = {}


def trajectory(seed: int, name: str, iterations: int) -> list[WorldStep]:
    """The first `iterations` steps of target `name` in world `seed`."""
    key = (seed, name)
    if key not in _TRAJECTORIES:
        if len(_TRAJECTORIES) >= _CACHE_LIMIT:
            _TRAJECTORIES.clear()
        target = world_target(seed, name)
        baseline = target.start + random.Random(f"autoloopd-fleet:{seed}:{name}:0").gauss(
            0.0, target.noise
        )
        # state: [true score, best measured]
        _TRAJECTORIES[key] = ([], [target.start, baseline])
    steps, state = _TRAJECTORIES[key]
    target = world_target(seed, name)
    while len(steps) < iterations:
        k = len(steps) + 1
        rng = random.Random(f"autoloopd-fleet:{seed}:{name}:{k}")
        cur, best = state
        if rng.random() < target.p_success:
            delta = rng.betavariate(target.f_alpha, target.f_beta) * (target.ceiling - cur)
        elif rng.random() < 0.4:
            delta = 0.0
        else:
            delta = -abs(rng.gauss(0.0, target.bad))
        measured = cur + delta + rng.gauss(0.0, target.noise)
        kept = measured > best
        after = min(1.0, max(0.0, cur + delta)) if kept else cur
        if kept:
            state[1] = measured
        state[0] = after
        cost = target.mean_cost_usd * rng.lognormvariate(0.0, 0.25)
        steps.append(WorldStep(cur, after, measured, kept, cost))
    return steps[:iterations]


def dimension_scores(target: WorldTarget, measured: float) -> dict[str, float]:
    """The per-dimension scores reported for a measured weighted score."""
    return {
        d: round(min(1.0, max(0.0, measured + o)), 4)
        for d, o in zip(DIMENSIONS, target.offsets, strict=True)
    }
