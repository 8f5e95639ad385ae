"""The report's plain data: what the files say about each target, ready to render.

Nothing here does I/O; `reader.py` fills these records from a state root and the renderers
(`html.py`, `markdown.py`) turn them into text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IterationRow:
    """One line of a target's iteration log, with its handoff text when there is one."""

    iteration: int
    started_at: str
    finished_at: str
    status: str
    decision: str | None
    weighted_score: float | None
    cost_usd: float
    estimated: bool  # the cost is wall time x rate, not what the orchestrator reported
    duration_s: float
    candidate_id: str | None
    artifact_path: str | None
    error: str | None
    handoff: str | None
    # What the orchestrator reported when it differs from `weighted_score`, the score the
    # iteration counts with (a keep that changed no file: policy.progress.counted_score).
    reported_score: float | None = None
    changed: bool | None = None  # did the run change the target's files (None: not checked)

    @property
    def shown_score(self) -> str:
        """The counted score, and the reported one beside it when they differ."""
        if self.reported_score is None:
            return score(self.weighted_score)
        return (
            f"{score(self.weighted_score)} (reported {score(self.reported_score)}; "
            "kept, no file changed)"
        )

    @property
    def kept(self) -> bool:
        """True when the iteration's decision was `keep`."""
        return self.decision == "keep"


@dataclass(frozen=True, slots=True)
class ReviewRow:
    """A held-back candidate: awaiting review, or what a reviewer (or the expiry) decided."""

    review_id: str
    candidate_id: str
    state: str  # pending, approved, rejected or expired
    title: str | None
    risk_level: str | None
    created_at: str | None
    age_s: float | None = None  # pending: how long it has waited
    by: str | None = None
    at: str | None = None
    note: str | None = None
    iteration: int | None = None  # the iteration the verdict counts on, when placed

    def sentence(self) -> str:
        """The row in words (plain text; the renderers escape it)."""
        what = self.review_id + (f" ({self.title})" if self.title else "")
        if self.state == "pending":
            waited = "" if self.age_s is None else f", waiting {self.age_s / 3600:.1f} h"
            risk = f", risk {self.risk_level}" if self.risk_level else ""
            return f"pending: {what}{risk}{waited}"
        on = f" (iteration {self.iteration})" if self.iteration is not None else ""
        note = f": {self.note}" if self.note else ""
        return f"{self.state}: {what}{on} by {self.by or '?'} at {self.at or '?'}{note}"


@dataclass(frozen=True, slots=True)
class TargetReport:
    """One target: its state's figures, its iterations and why it stopped."""

    name: str
    state_root: str
    status: str
    reason: str | None  # why it stopped, in words; None while it has not stopped
    iterations_completed: int
    max_iterations: int | None
    total_cost_usd: float
    max_cost_usd: float | None
    best_weighted_score: float | None
    last_decision: str | None
    iterations: tuple[IterationRow, ...]
    problems: tuple[str, ...] = ()  # what could not be read (shown, never fatal)
    reviews: tuple[ReviewRow, ...] = ()  # held-back candidates: pending first, then decided

    @property
    def estimated(self) -> bool:
        """True when any of the target's money is an estimate."""
        return any(row.estimated for row in self.iterations)

    @property
    def kept(self) -> tuple[IterationRow, ...]:
        """The iterations whose decision was `keep`."""
        return tuple(row for row in self.iterations if row.kept)

    @property
    def scored(self) -> tuple[tuple[int, float], ...]:
        """(iteration, weighted score) of every iteration that has a score."""
        return tuple(
            (row.iteration, row.weighted_score)
            for row in self.iterations
            if row.weighted_score is not None
        )


@dataclass(frozen=True, slots=True)
class FleetReport:
    """Every target of one report, and where the figures came from."""

    generated_at: str
    source: str  # the config file or the state roots, for the heading
    targets: tuple[TargetReport, ...]

    @property
    def total_cost_usd(self) -> float:
        """What every target spent together."""
        return sum(t.total_cost_usd for t in self.targets)

    @property
    def estimated(self) -> bool:
        """True when any target's money is an estimate."""
        return any(t.estimated for t in self.targets)


def money(amount_usd: float | None, estimated: bool = False) -> str:
    """`$1.2345`, `~$1.2345` for an estimate, `-` for nothing."""
    if amount_usd is None:
        return "-"
    return f"{'~' if estimated else ''}${amount_usd:.4f}"


def score(value: float | None) -> str:
    """A score with four decimals, `-` for none."""
    return "-" if value is None else f"{value:.4f}"
