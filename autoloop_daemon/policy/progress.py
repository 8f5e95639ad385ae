"""A target's running totals from its log, updated in O(1) per iteration.

`state.reconcile` recomputes everything from the whole log: right at start-up, but linear in
the history. `Progress` is built once from the log and then advanced one entry at a time, so
a checkpoint costs the same at iteration 10 and 10,000. `apply_to` writes exactly the fields
`reconcile` derives (tested to agree).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from autoloop_daemon.models import LogEntry
from autoloop_daemon.policy.stops import LoopView
from autoloop_daemon.storage.files.state_file import SCORE_HISTORY_LIMIT, entry_score


class Progress:
    """Totals, scores and decisions of one target's log, oldest entry first."""

    def __init__(self, weights: Mapping[str, float], min_improvement: float = 0.0) -> None:
        """An empty log; feed it with `add`."""
        self._weights = dict(weights)
        self._min_improvement = min_improvement
        self._cost_partials: list[float] = []
        self.completed = 0
        self.scores: list[float] = []  # weighted scores of completed entries that have one
        self.decisions: list[str] = []
        self.history: deque[dict[str, Any]] = deque(maxlen=SCORE_HISTORY_LIMIT)
        self.current_scores: dict[str, float] = {}
        self.best: float | None = None
        self.last_decision: str | None = None
        self.consecutive_errors = 0
        self.plateau_counter = 0
        self.last_iteration = 0
        self.recent_costs: deque[float] = deque(maxlen=3)

    @classmethod
    def from_entries(
        cls, entries: Iterable[LogEntry], weights: Mapping[str, float], min_improvement: float = 0.0
    ) -> Progress:
        """Totals of an existing log."""
        progress = cls(weights, min_improvement)
        for entry in entries:
            progress.add(entry)
        return progress

    @property
    def total_cost_usd(self) -> float:
        """The sum of every entry's cost, as `state.total_cost` computes it."""
        return round(math.fsum(self._cost_partials), 9)

    def add(self, entry: LogEntry) -> None:
        """Account for one more log entry."""
        self._cost_partials.append(entry.cost_usd)
        if len(self._cost_partials) > 64:  # keep fsum's input short but exact enough
            self._cost_partials = [math.fsum(self._cost_partials)]
        self.last_iteration = entry.iteration
        if entry.status != "interrupted":
            self.recent_costs.append(entry.cost_usd)
        if not entry.completed:
            if entry.status == "failed":
                self.consecutive_errors += 1
            return
        self.consecutive_errors = 0
        self.completed += 1
        score = entry_score(entry, self._weights)
        if score is not None:
            if self.best is not None and score <= self.best + self._min_improvement:
                self.plateau_counter += 1
            else:
                self.plateau_counter = 0
            self.scores.append(score)
            self.best = score if self.best is None else max(self.best, score)
        if entry.decision is not None:
            self.decisions.append(entry.decision)
        self.last_decision = entry.decision
        if entry.scores:
            self.current_scores = dict(entry.scores)
        self.history.append(
            {
                "iteration": entry.iteration,
                "weighted_score": score,
                "decision": entry.decision,
                "scores": dict(entry.scores),
                "timestamp": entry.finished_at,
            }
        )

    def view(self) -> LoopView:
        """What the stop conditions look at."""
        return LoopView(self.completed, self.total_cost_usd, self.scores, self.decisions)

    def apply_to(self, state: dict[str, Any]) -> None:
        """Write the log-derived fields into `state` (in place)."""
        state.update(
            iterations_completed=self.completed,
            total_cost_usd=self.total_cost_usd,
            score_history=list(self.history),
            current_scores=dict(self.current_scores),
            best_weighted_score=self.best,
            last_decision=self.last_decision,
            consecutive_errors=self.consecutive_errors,
            plateau_counter=self.plateau_counter,
            next_iteration=self.last_iteration + 1,
        )
