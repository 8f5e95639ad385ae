"""What a run is charged: the orchestrator's reported cost, else wall time at the rate. Pure."""

from __future__ import annotations

from autoloop_daemon.models import MAX_RUN_COST_USD


def elapsed_cost_usd(duration_s: float, cost_per_minute_usd: float) -> float:
    """The estimated cost of a run that reported none: wall time at the target's rate.

    At most MAX_RUN_COST_USD, the most a log line may hold (only an absurd rate gets there).
    """
    return min(round(max(0.0, duration_s) / 60.0 * cost_per_minute_usd, 6), MAX_RUN_COST_USD)


def charged_cost_usd(
    reported_usd: float | None, duration_s: float, cost_per_minute_usd: float
) -> tuple[float, str]:
    """The cost to book for a run and where it came from: ("reported" | "estimated")."""
    if reported_usd is not None:
        return reported_usd, "reported"
    return elapsed_cost_usd(duration_s, cost_per_minute_usd), "estimated"
