"""Stop conditions as pure functions, including the original autoloop.py's own examples."""

from __future__ import annotations

import pytest

from autoloop_daemon.policy.stops import (
    Limits,
    LoopView,
    backoff_seconds,
    is_oscillating,
    is_plateau,
    plain_sentence,
    plateau_counter,
    stop_reason,
    stop_sentence,
    weighted_score,
)
from autoloop_daemon.vocab import TargetStatus


@pytest.mark.parametrize(
    ("history", "window", "min_improvement", "expected"),
    [
        ([0.85, 0.83, 0.84, 0.82], 3, 0.0, True),  # the seed's example
        ([0.85, 0.85, 0.85, 0.85], 3, 0.0, True),  # equal is no improvement
        ([0.50, 0.60, 0.70], 3, 0.0, False),  # no earlier score to beat
        ([0.50, 0.60, 0.70, 0.71], 3, 0.0, False),  # still rising
        ([0.70, 0.71, 0.705, 0.709], 3, 0.02, True),  # gains below min_improvement
        ([0.70, 0.71, 0.705, 0.75], 3, 0.02, False),  # a real gain inside the window
        ([0.9, 0.1, 0.2], 2, 0.0, True),
        ([0.9], 1, 0.0, False),
    ],
)
def test_plateau_examples(
    history: list[float], window: int, min_improvement: float, expected: bool
) -> None:
    """Plateau means: the last `window` scores did not beat the best earlier one."""
    assert is_plateau(history, window, min_improvement) is expected


def test_plateau_counter_counts_non_improving_streak() -> None:
    """The counter is the current streak of scores that failed to beat the best before them."""
    assert plateau_counter([0.85, 0.83, 0.84, 0.82]) == 3
    assert plateau_counter([0.5, 0.6, 0.55, 0.7]) == 0
    assert plateau_counter([0.5, 0.6, 0.55]) == 1
    assert plateau_counter([]) == 0


@pytest.mark.parametrize(
    ("decisions", "window", "expected"),
    [
        (["keep", "reject", "keep", "reject"], 4, True),  # the seed's example
        (["reject", "keep", "revert", "keep"], 4, True),  # revert rejects too
        (["keep", "pending_promote", "keep", "pending_promote"], 4, False),  # neutral
        (["keep", "no_candidates", "keep", "no_accepted_candidates"], 4, False),
        (["keep", "escalate", "keep", "reject"], 4, False),  # an unknown word is neutral
        (["pending_promote", "keep", "reject", "keep", "reject"], 4, True),  # before the window
        (["keep", "reject", "keep", "reject", "pending"], 4, False),  # the newest breaks it
        (["keep", "keep", "reject", "keep"], 4, False),
        (["keep", "reject", "keep"], 4, False),  # too short
        (["keep", "reject", "pending", "reject"], 4, False),  # pending breaks it
        (["keep", "reject"], 2, True),
        (["keep", "reject", "keep", "reject"], 0, False),  # 0 disables
    ],
)
def test_oscillation_examples(decisions: list[str], window: int, expected: bool) -> None:
    """Oscillation: the last `window` decisions alternate keep / reject-or-revert."""
    assert is_oscillating(decisions, window) is expected


def test_weighted_score_uses_weights_and_defaults_missing_to_one() -> None:
    """Weights multiply dimensions; an unweighted dimension weighs 1; no scores is None."""
    assert weighted_score({"a": 1.0, "b": 0.0}, {"a": 3.0}) == pytest.approx(0.75)
    assert weighted_score({"a": 0.4, "b": 0.8}, {}) == pytest.approx(0.6)
    assert weighted_score({}, {"a": 1.0}) is None
    assert weighted_score({"a": 0.5}, {"a": 0.0}) is None


LIMITS = Limits(max_iterations=5, max_cost_usd=10.0, plateau_window=3, oscillation_window=4)


def test_stop_reason_order_and_messages() -> None:
    """Max iterations wins over cost, cost over plateau, plateau over oscillation."""
    view = LoopView(5, 20.0, [0.9, 0.1, 0.1, 0.1], ["keep", "reject", "keep", "reject"])
    assert stop_reason(view, LIMITS) == "stopped_max_iter"
    view = LoopView(4, 20.0, [0.9, 0.1, 0.1, 0.1], [])
    assert stop_reason(view, LIMITS) == "stopped_cost"
    view = LoopView(4, 1.0, [0.9, 0.1, 0.1, 0.1], ["keep", "reject", "keep", "reject"])
    assert stop_reason(view, LIMITS) == "stopped_plateau"
    errors = {"consecutive_errors": 0, "max_consecutive_errors": 3, "last_failure": None}
    assert stop_sentence("stopped_plateau", view, LIMITS, **errors) == (
        "plateau detected (no improvement in last 3 iterations)"
    )
    view = LoopView(4, 1.0, [0.1, 0.2, 0.3, 0.4], ["keep", "reject", "keep", "reject"])
    assert stop_reason(view, LIMITS) == "stopped_oscillation"
    assert stop_reason(LoopView(0, 0.0, [], []), LIMITS) is None


def test_backoff_doubles_and_caps() -> None:
    """Retry delays double from the base and never exceed the cap."""
    assert [backoff_seconds(n, 5.0, 30.0) for n in range(5)] == [0.0, 5.0, 10.0, 20.0, 30.0]
    assert backoff_seconds(10_000, 5.0, 300.0) == 300.0


@pytest.mark.parametrize("status", [s.value for s in TargetStatus])
def test_a_plain_sentence_is_the_full_sentence_of_its_status(status: str) -> None:
    """`plain_sentence` (the shortcut a shutdown takes for each of its targets) says exactly
    what `stop_sentence` says, whatever the figures, the failure, the operator or the budget;
    or it says nothing and leaves the status to `stop_sentence`."""
    plain = plain_sentence(status)
    if plain is None:
        return
    view = LoopView(4, 20.0, [0.9, 0.1], ["keep", "reject"])
    full = stop_sentence(
        status, view, LIMITS, consecutive_errors=3, max_consecutive_errors=3,
        last_failure="boom", budget_spent_usd=9.0, budget_cap_usd=10.0,
        next_run_at="2026-12-08T00:00:00Z", operator={"who": "ops", "at": "now"},
    )  # fmt: skip
    assert plain == full


def test_plain_sentences_cover_the_shutdown_and_leave_the_worded_ones() -> None:
    assert plain_sentence(TargetStatus.STOPPED_SIGNAL) == "interrupted by signal"
    for worded in ("error", "stopped_operator", "stopped_budget", "stopped_max_iter"):
        assert plain_sentence(worded) is None
