"""The gain per dollar that `min_gain_per_usd` compares, with its uncertainty. Pure.

policy/allocation.py's rate `r̂ = (closed + k·pooled) / (n + k)` is read as the mean of a
Beta posterior with `closed + k·pooled` successes in `n + k` trials (each iteration closes
a fraction of its headroom). Its upper bound at `CONFIDENCE` (normal approximation of that
Beta) times headroom / cost is what must fall below the threshold: a target is stopped only
when its gain per dollar is below `min_gain_per_usd` with 90 % confidence, so three noisy
iterations no longer stop a target whose true yield is still above it. The price: a target
whose yield really is low runs a few iterations longer before the evidence is firm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

from autoloop_daemon.policy.allocation import PRIOR_ITERATIONS, closure, headroom

CONFIDENCE = 0.90  # one-sided: stop only when the yield is below the least with this confidence
_Z = NormalDist().inv_cdf(CONFIDENCE)


def rate_upper(closed: float, steps: int, pooled: float, prior: float = PRIOR_ITERATIONS) -> float:
    """The upper `CONFIDENCE` bound of the shrunk rate (in [0, 1])."""
    trials = steps + prior
    mean = (closed + prior * pooled) / trials
    mean = min(1.0, max(0.0, mean))
    spread = math.sqrt(mean * (1.0 - mean) / (trials + 1.0))
    return min(1.0, mean + _Z * spread)


def gain_per_usd_upper(
    scores: Sequence[float],
    expected_cost_usd: float,
    pooled: float,
    dimensions: Mapping[str, float] | None = None,
) -> float:
    """The upper `CONFIDENCE` bound of the next iteration's gain per dollar."""
    evidence = closure(scores)
    best = max(scores) if scores else None
    gain = rate_upper(evidence.closed, evidence.iterations, pooled) * headroom(best, dimensions)
    if expected_cost_usd <= 0:
        return math.inf if gain > 0 else 0.0
    return gain / expected_cost_usd
