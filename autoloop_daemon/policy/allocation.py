"""The estimated gain per dollar of a target's next iteration. Pure.

`gain = r̂ · headroom / expected_cost`: `headroom` is what is left to gain (`TOP` minus the
best weighted score; with per-dimension scores, the mean shortfall of the dimensions still
below `DIMENSION_LINE` when that is larger), and `r̂` the fraction of the remaining headroom
the target closed per iteration over its last `RECENT` scored iterations, shrunk towards the
fleet's pooled rate with `PRIOR_ITERATIONS` pseudo-iterations so that a target with little
history is neither starved nor over-trusted.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

TOP = 0.97  # a weighted score past which nothing is left to gain
DIMENSION_LINE = 0.80  # the handoff's line: a dimension below it still has work to do
RECENT = 4  # scored iterations the rate looks at
PRIOR_ITERATIONS = 2.0  # weight of the fleet's pooled rate, in iterations
DEFAULT_POOLED_RATE = 0.2  # the prior before any target has history


def expected_cost_usd(
    recent: Iterable[float], fleet: Iterable[float], otherwise: Callable[[], float]
) -> float:
    """What a target's next iteration is expected to cost: the mean of its own recent
    costs, else of the fleet's, else `otherwise()` (its reservation). The reservation is
    cautious (the fleet's dearest recent run), which would make every target look alike
    and new ones look dear."""
    for costs in (recent, fleet):
        paid = [c for c in costs if c > 0]
        if paid:
            return sum(paid) / len(paid)
    return otherwise()


@dataclass(frozen=True, slots=True)
class RateEvidence:
    """How much headroom a target closed (`closed`, in fractions) over `iterations`."""

    closed: float
    iterations: int


def closure(scores: Sequence[float], *, recent: int = RECENT, top: float = TOP) -> RateEvidence:
    """The fraction of headroom closed per step by the best-so-far of `scores` (weighted
    scores, oldest first), summed over the last `recent` steps."""
    if len(scores) < 2:
        return RateEvidence(0.0, 0)
    first = max(0, len(scores) - recent - 1)
    best = [max(scores[: first + 1])]  # the best before the steps looked at
    for score in scores[first + 1 :]:
        best.append(max(best[-1], score))
    steps = list(itertools.pairwise(best))
    closed = 0.0
    for before, after in steps:
        room = top - before
        if room > 1e-9:
            closed += min(1.0, max(0.0, (after - before) / room))
    return RateEvidence(closed, len(steps))


def pooled_rate(evidence: Iterable[RateEvidence]) -> float:
    """The fleet's rate: all closed headroom over all steps (a default before any)."""
    closed = steps = 0.0
    for e in evidence:
        closed += e.closed
        steps += e.iterations
    return closed / steps if steps > 0 else DEFAULT_POOLED_RATE


def shrunk_rate(own: RateEvidence, pooled: float, prior: float = PRIOR_ITERATIONS) -> float:
    """The target's rate, shrunk towards `pooled` with `prior` pseudo-iterations."""
    return (own.closed + prior * pooled) / (own.iterations + prior)


def headroom(
    best: float | None,
    dimensions: Mapping[str, float] | None = None,
    *,
    top: float = TOP,
    line: float = DIMENSION_LINE,
) -> float:
    """What is left to gain: `top - best`, or the dimensions' mean shortfall below `line`
    when that is larger (a target whose weak dimensions still lag has room left)."""
    room = max(0.0, top - (best if best is not None else 0.0))
    if dimensions:
        shortfall = sum(max(0.0, line - v) for v in dimensions.values()) / len(dimensions)
        room = max(room, shortfall)
    return room


def gain_per_usd(
    scores: Sequence[float],
    expected_cost_usd: float,
    pooled: float,
    dimensions: Mapping[str, float] | None = None,
) -> float:
    """The estimated gain (weighted-score points) per dollar of the next iteration."""
    best = max(scores) if scores else None
    rate = shrunk_rate(closure(scores), pooled)
    gain = rate * headroom(best, dimensions)
    if expected_cost_usd <= 0:
        return math.inf if gain > 0 else 0.0
    return gain / expected_cost_usd
