"""A target's running totals from its log, updated in O(1) per iteration. Pure.

Built once from the log at start-up and then advanced one entry at a time, so a checkpoint
costs the same at iteration 10 and 10,000. It is the one place where totals are derived
from the log: `apply_to` writes every log-derived field of a `TargetState`.

Memory per iteration is a few bytes: weighted scores sit in an `array('d')` (8 bytes each,
kept whole because a plateau window may reach back any distance) and decisions as one
keep/reject/neutral byte each (`policy.decisions`), which is all the oscillation check
looks at.
"""

from __future__ import annotations

import base64
import math
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, overload

from autoloop_daemon.models import LogEntry
from autoloop_daemon.policy.decisions import DecisionKind, decision_kind
from autoloop_daemon.policy.recording import CAP_CROSSING_ERRORS
from autoloop_daemon.policy.stops import LoopView, weighted_score
from autoloop_daemon.score_history import EMPTY_HISTORY, ScoreHistory, item_text
from autoloop_daemon.target_state import TargetState
from autoloop_daemon.vocab import Decision, RunStatus

# The state keeps only the newest N score_history items; the log has them all.
SCORE_HISTORY_LIMIT = 50
RECENT_COSTS = 3  # the costs a reservation's estimate looks at
# The word each decision kind reads as in `Progress.decisions` (what the stop checks see).
KIND_WORDS: dict[int, str] = {
    DecisionKind.KEEP: Decision.KEEP,
    DecisionKind.REJECT: Decision.REJECT,
    DecisionKind.NEUTRAL: "neutral",
}


def counted_score(
    score: float, *, decision: str | None, changed: bool | None, best: float | None
) -> float:
    """The score an iteration counts with for the best score and the plateau.

    As reported, except for a keep that changed no file (`changed` False): it improved
    nothing, so it counts as at most the best score before it. State, summary, status and
    report all show this counted score (the state and report add the reported one beside
    it when they differ); the log keeps what the orchestrator reported.
    """
    if changed is False and decision == Decision.KEEP and best is not None:
        return min(score, best)
    return score


def reviewed_score(
    score: float, entry: LogEntry, verdict: str | None, *, best: float | None
) -> float:
    """`counted_score`, after a reviewer's verdict on `entry` (None: none).

    An approved candidate counts with its score as a keep, whether or not its files were in
    the target when the run ended (the gate held them back); a rejected one improved nothing,
    so it counts with at most the best score before it.
    """
    if verdict == Decision.KEEP:
        return score
    if verdict is not None:
        return score if best is None else min(score, best)
    return counted_score(score, decision=entry.decision, changed=entry.changed, best=best)


def entry_score(entry: LogEntry, weights: Mapping[str, float] | None = None) -> float | None:
    """An entry's weighted score: as logged, else computed from its scores and `weights`."""
    if entry.weighted_score is not None:
        return entry.weighted_score
    if weights is None or not entry.scores:
        return None
    return weighted_score(entry.scores, weights)


class _KeptView(Sequence[str]):
    """Decisions as the oscillation check sees them: "keep", "reject" or "neutral", one byte
    each."""

    def __init__(self, kept: bytearray) -> None:
        self._kept = kept

    def __len__(self) -> int:
        return len(self._kept)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [KIND_WORDS[k] for k in self._kept[index]]
        return KIND_WORDS[self._kept[index]]


class Progress:
    """Totals, scores and decisions of one target's log, oldest entry first."""

    __slots__ = (
        "_cost_partials", "_estimated_partials", "_history", "_kept", "_min_improvement",
        "_unencoded", "_weights", "best", "best_iteration", "completed", "consecutive_errors",
        "current_scores", "last_decision", "last_iteration", "overrides", "plateau_counter",
        "recent_costs", "reports_cost", "scores"
    )  # fmt: skip

    def __init__(
        self,
        weights: Mapping[str, float],
        min_improvement: float = 0.0,
        overrides: Mapping[int, str] | None = None,
    ) -> None:
        """An empty log; feed it with `add`. `overrides` maps an iteration to the decision
        it counts with instead of its own: a reviewer's verdict (policy/review_verdicts.py)."""
        self._weights = dict(weights)
        self.overrides: dict[int, str] = dict(overrides or {})
        self._min_improvement = min_improvement
        self._cost_partials: list[float] = []
        self._estimated_partials: list[float] = []
        self.completed = 0
        self.scores: array[float] = array("d")  # weighted scores of completed, scored entries
        self._kept = bytearray()  # a DecisionKind per completed entry
        # Bounded lists, not deques: an empty deque allocates a 64-slot block (~0.6 kB),
        # 1.5 MB for these two at 1,000 targets (tracemalloc, issue 24).
        self._history = EMPTY_HISTORY  # the last SCORE_HISTORY_LIMIT (score_history.py)
        # Items added since `history` was last read, as `item_text`'s arguments: a log read
        # at start-up encodes only the items it keeps (~6 µs each).
        self._unencoded: list[tuple[Any, ...]] = []
        self.current_scores: dict[str, float] = {}
        self.best: float | None = None
        self.best_iteration: int | None = None
        self.last_decision: str | None = None
        self.consecutive_errors = 0
        self.plateau_counter = 0
        self.last_iteration = 0
        self.recent_costs: list[float] = []  # the last RECENT_COSTS
        self.reports_cost: bool | None = None  # did the last finished run report its cost

    @classmethod
    def from_entries(
        cls,
        entries: Iterable[LogEntry],
        weights: Mapping[str, float],
        min_improvement: float = 0.0,
        overrides: Mapping[int, str] | None = None,
    ) -> Progress:
        """Totals of an existing log (with the verdicts `overrides` gives, if any)."""
        progress = cls(weights, min_improvement, overrides)
        for entry in entries:
            progress.add(entry)
        return progress

    @property
    def total_cost_usd(self) -> float:
        """The sum of every entry's cost (failed and interrupted runs included)."""
        return round(math.fsum(self._cost_partials), 9)

    @property
    def estimated_cost_usd(self) -> float:
        """The part of the total that is wall time x rate (no cost reported)."""
        return round(math.fsum(self._estimated_partials), 9)

    @property
    def decisions(self) -> Sequence[str]:
        """Each completed iteration as "keep", "reject" (reject, revert) or "neutral" (any
        other word), oldest first."""
        return _KeptView(self._kept)

    def add(self, entry: LogEntry) -> None:
        """Account for one more log entry."""
        self._cost_partials.append(entry.cost_usd)
        if len(self._cost_partials) > 64:  # keep fsum's input short but exact enough
            self._cost_partials = [math.fsum(self._cost_partials)]
        if entry.estimated:
            self._estimated_partials.append(entry.cost_usd)
            if len(self._estimated_partials) > 64:
                self._estimated_partials = [math.fsum(self._estimated_partials)]
        self.last_iteration = entry.iteration
        if entry.status != RunStatus.INTERRUPTED:
            _append_bounded(self.recent_costs, entry.cost_usd, RECENT_COSTS)
            if entry.cost_source is not None:
                self.reports_cost = entry.cost_source == "reported"
        if not entry.completed:
            if entry.status == RunStatus.FAILED:
                self.consecutive_errors += 1
            elif entry.error in CAP_CROSSING_ERRORS:
                self.completed += 1  # the run that crossed a cap (policy/recording.py)
            return
        self.consecutive_errors = 0
        self.completed += 1
        score = entry_score(entry, self._weights)
        counted = score
        decision = self.overrides.get(entry.iteration, entry.decision)
        if score is not None:
            counted = reviewed_score(
                score, entry, self.overrides.get(entry.iteration), best=self.best
            )
            if self.best is not None and counted <= self.best + self._min_improvement:
                self.plateau_counter += 1
            else:
                self.plateau_counter = 0
            self.scores.append(counted)
            if self.best is None or counted > self.best:
                self.best, self.best_iteration = counted, entry.iteration
        self._kept.append(decision_kind(decision))
        self.last_decision = decision
        if entry.scores:
            self.current_scores = entry.scores  # shared, never changed in place
        # A keep that changed no file counts less than reported (see counted_score).
        reported = score if counted != score else None
        item = (entry.iteration, counted, decision, entry.scores, entry.finished_at, reported)
        _append_bounded(self._unencoded, item, SCORE_HISTORY_LIMIT)

    @property
    def history(self) -> ScoreHistory:
        """The newest `SCORE_HISTORY_LIMIT` score_history items, oldest first."""
        if self._unencoded:
            new = [(fields[0], item_text(*fields)) for fields in self._unencoded]
            self._history = self._history.appended(new, SCORE_HISTORY_LIMIT)
            self._unencoded.clear()
        return self._history

    def to_json(self) -> dict[str, Any]:
        """Everything `from_json` needs to go on where this left off (a log checkpoint).

        Scores and decision kinds are base64 of their bytes: 8 bytes (+1/3) per iteration.
        """
        return {
            "weights": self._weights,
            "min_improvement": self._min_improvement,
            "cost_partials": self._cost_partials,
            "estimated_partials": self._estimated_partials,
            "completed": self.completed,
            "scores": base64.b64encode(self.scores.tobytes()).decode(),
            "kinds": base64.b64encode(bytes(self._kept)).decode(),
            "history": self.history.to_json(),
            "current_scores": self.current_scores,
            "best": self.best,
            "best_iteration": self.best_iteration,
            "last_decision": self.last_decision,
            "consecutive_errors": self.consecutive_errors,
            "plateau_counter": self.plateau_counter,
            "last_iteration": self.last_iteration,
            "recent_costs": list(self.recent_costs),
            "reports_cost": self.reports_cost,
            # Verdicts are applied by a rebuild from the log (engine/review_apply.py), so a
            # checkpoint made with some is never taken up again as it is (`from_json`).
            "overrides": {str(k): v for k, v in self.overrides.items()},
        }

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], weights: Mapping[str, float], min_improvement: float
    ) -> Progress:
        """The Progress `to_json` described. ValueError (or KeyError, TypeError) when it does
        not fit: other weights or min_improvement than now, or a damaged object."""
        if dict(data["weights"]) != dict(weights) or data["min_improvement"] != min_improvement:
            raise ValueError("weights or min_improvement changed since the checkpoint")
        if data.get("overrides"):  # absent from older checkpoints
            raise ValueError("the checkpoint counts reviewers' verdicts: rebuilt from the log")
        p = cls(weights, min_improvement)
        p._cost_partials = [float(x) for x in data["cost_partials"]]
        p._estimated_partials = [float(x) for x in data["estimated_partials"]]
        p.completed = int(data["completed"])
        p.scores = array("d")
        p.scores.frombytes(base64.b64decode(data["scores"], validate=True))
        # "kinds", not the older "kept" (keep / not-keep): an older checkpoint is rebuilt
        p._kept = bytearray(base64.b64decode(data["kinds"], validate=True))
        p._history = ScoreHistory.of(data["history"][-SCORE_HISTORY_LIMIT:])
        p.current_scores = {str(k): float(v) for k, v in data["current_scores"].items()}
        p.best = None if data["best"] is None else float(data["best"])
        p.best_iteration = data["best_iteration"]
        p.last_decision = data["last_decision"]
        p.consecutive_errors = int(data["consecutive_errors"])
        p.plateau_counter = int(data["plateau_counter"])
        p.last_iteration = int(data["last_iteration"])
        p.recent_costs = [float(x) for x in data["recent_costs"]][-RECENT_COSTS:]
        p.reports_cost = data["reports_cost"]
        kinds_ok = max(p._kept, default=0) <= max(DecisionKind)
        if len(p._kept) != p.completed or len(p.scores) > p.completed or not kinds_ok:
            raise ValueError("inconsistent checkpoint")
        return p

    @property
    def last_score(self) -> float | None:
        """The newest weighted score, if any iteration had one."""
        return self.scores[-1] if self.scores else None

    def view(self) -> LoopView:
        """What the stop conditions look at."""
        return LoopView(self.completed, self.total_cost_usd, self.scores, self.decisions)

    def apply_to(self, state: TargetState) -> None:
        """Write every log-derived field into `state` (in place)."""
        state.iterations_completed = self.completed
        state.total_cost_usd = self.total_cost_usd
        state.score_history = self.history  # immutable: shared, not copied
        state.current_scores = self.current_scores
        state.best_weighted_score = self.best
        state.best_iteration = self.best_iteration
        state.estimated_cost_usd = self.estimated_cost_usd
        state.last_decision = self.last_decision
        state.consecutive_errors = self.consecutive_errors
        state.plateau_counter = self.plateau_counter
        state.next_iteration = self.last_iteration + 1
        if state.in_flight is not None and state.in_flight.iteration <= self.last_iteration:
            state.in_flight = None  # the log already holds it


def _append_bounded(items: list[Any], item: Any, limit: int) -> None:
    """Append `item`, dropping the oldest beyond `limit` (a deque's maxlen, without its
    block of 64 slots)."""
    items.append(item)
    if len(items) > limit:
        del items[0]
