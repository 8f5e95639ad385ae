"""Plain data shared between modules: a target's resolved settings, log entries, results.

Nothing here does I/O; every type is a frozen dataclass so it can be passed between tasks
freely and compared in tests. A `LogEntry` checks its own fields when it is made, so no code
path can write a log line that the log reader would refuse.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard

from autoloop_daemon.exceptions import LogLineIncompleteError
from autoloop_daemon.vocab import Mode, RunStatus

RUN_STATUSES: tuple[str, ...] = tuple(status.value for status in RunStatus)
# The most one run may cost. No cap can be set above 1e9 USD ([budget] and max_cost_usd), so
# a log line claiming more is damage or forgery, never a run, and is refused as corruption.
MAX_RUN_COST_USD = 1e9
COST_SOURCES = ("reported", "estimated")


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One target's settings after merging `[defaults]`, the target's table and flags."""

    name: str
    path: Path
    state_root: Path
    mode: Mode = "single-run"
    max_iterations: int = 5
    max_cost_usd: float = 50.0
    plateau_window: int = 3
    min_improvement: float = 0.0
    oscillation_window: int = 4
    cooldown_minutes: float = 30.0
    max_consecutive_errors: int = 3
    iteration_timeout_minutes: float = 60.0
    orchestrator: tuple[str, ...] = ()
    scorer: tuple[str, ...] | None = None
    handoff_arg: str | None = "--source"
    # Passed with the handoff (each matching file after `handoff_arg`). None: what the
    # orchestrator would have discovered by itself without a --source (runs/feedback.py).
    sources: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    weights: tuple[tuple[str, float], ...] = ()
    dry_run: bool = False
    seed: int = 0
    schedule: str | None = None
    cost_per_minute_usd: float = 0.10
    estimated_cost_usd: float | None = None  # budget reservation before any history exists
    max_iteration_cost_usd: float | None = None  # reservation per run, and a live limit
    term_grace_seconds: float = 10.0  # SIGTERM -> SIGKILL grace for the orchestrator's group
    backoff_base_seconds: float = 5.0  # first retry delay after a failed iteration (doubles)
    backoff_max_seconds: float = 300.0
    simulated_seconds: float = 0.2  # wall time of one simulated (dry-run) iteration
    simulation: str = "classic"  # the simulator's world: "classic" or "fleet"
    min_gain_per_usd: float = 0.0  # stop when the estimated gain per dollar falls below (0 off)
    target_score: float | None = None  # stop once the best weighted score reaches it
    deadline: str | None = None  # "HH:MM" (local, daily) or an ISO timestamp
    hosts: tuple[str, ...] = ()  # cluster mode: the only hosts that may run it (empty: any)
    hard_cap: bool = False  # [budget] guarantee = "hard": reserve the worst case, never pass
    # Human review of held-back candidates (engine/review_apply.py).
    restore_best_on_reject: bool = False  # a rejected candidate: target's files back to best/
    review_pause: bool = False  # no new iteration while candidates await review
    review_expire_hours: float | None = None  # decline what nobody reviewed within this

    @property
    def cooldown_s(self) -> float:
        """The pause between two iterations, in seconds."""
        return self.cooldown_minutes * 60.0

    @property
    def timeout_s(self) -> float:
        """The longest one orchestrator run may take, in seconds."""
        return self.iteration_timeout_minutes * 60.0

    @property
    def weights_map(self) -> dict[str, float]:
        """Dimension weights as a dict (missing dimensions weigh 1.0)."""
        return dict(self.weights)

    @property
    def env_map(self) -> dict[str, str]:
        """Extra environment for the orchestrator as a dict."""
        return dict(self.env)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_float(value: Any, name: str) -> Any:
    """A JSON number as a float (an int too large for one is an error); anything else as is."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"{name}: not a finite number: {_short(value)}") from None
    return value


def _number_problem(name: str, value: Any, high: float) -> str | None:
    """Why `value` is not a finite number within 0..`high`, or None."""
    if not _is_number(value):
        return f"{name}: not a number: {_short(value)}"
    if not math.isfinite(value):
        return f"{name}: not a finite number: {value!r}"
    if value < 0:
        return f"{name}: negative: {value!r}"
    if value > high:
        if high == 1.0:
            return f"{name}: {value!r} is outside 0..1"
        return f"{name}: {value!r} is above {high:,.0f}, more than any run can cost"
    return None


def _entry_problem(e: LogEntry) -> str | None:
    """The first field of `e` that no run can produce, described; None when all are fine."""
    if not isinstance(e.iteration, int) or isinstance(e.iteration, bool) or e.iteration < 1:
        return f"iteration: not a positive integer: {_short(e.iteration)}"
    for name in ("started_at", "finished_at"):
        if not isinstance(getattr(e, name), str):
            return f"{name}: not a string: {_short(getattr(e, name))}"
    if e.status not in RUN_STATUSES:
        return f"status: unknown value {_short(e.status)}"
    for name in ("decision", "candidate_id", "artifact_path", "error"):
        value = getattr(e, name)
        if value is not None and not isinstance(value, str):
            return f"{name}: not a string or null: {_short(value)}"
    if e.weighted_score is not None:
        problem = _number_problem("weighted_score", e.weighted_score, 1.0)
        if problem:
            return problem
    problem = _number_problem("cost_usd", e.cost_usd, MAX_RUN_COST_USD)
    if problem:
        return problem
    problem = _number_problem("duration_seconds", e.duration_seconds, math.inf)
    if problem:
        return problem
    if not isinstance(e.scores, dict):
        return f"scores: not an object: {_short(e.scores)}"
    for dim, score in e.scores.items():
        if not isinstance(dim, str):
            return f"scores: dimension name not a string: {_short(dim)}"
        problem = _number_problem(f"scores.{dim}", score, 1.0)
        if problem:
            return problem
    if e.exit_code is not None and (
        not isinstance(e.exit_code, int) or isinstance(e.exit_code, bool)
    ):
        return f"exit_code: not an integer or null: {_short(e.exit_code)}"
    if e.cost_source is not None and e.cost_source not in COST_SOURCES:
        expected = ", ".join(COST_SOURCES)
        return f"cost_source: expected one of {expected}, found {_short(e.cost_source)}"
    if e.changed is not None and not isinstance(e.changed, bool):
        return f"changed: expected true, false or null, found {_short(e.changed)}"
    return None


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of `iteration_log.jsonl`: one orchestrator run, whatever its outcome."""

    iteration: int
    started_at: str
    finished_at: str
    status: RunStatus
    decision: str | None
    weighted_score: float | None
    cost_usd: float
    duration_seconds: float
    candidate_id: str | None = None
    artifact_path: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    exit_code: int | None = None
    error: str | None = None
    cost_source: str | None = None  # "reported" or "estimated" (wall time x rate); older: None
    changed: bool | None = None  # did the target's files change in this run (None: unknown)

    def __post_init__(self) -> None:
        """Refuse an entry no run can produce: ValueError naming the field and the value.

        Strings are strings (or null where optional), `iteration` is a positive integer,
        scores and `weighted_score` lie within 0..1, `duration_seconds` is finite and >= 0,
        `cost_usd` is finite, >= 0 and at most MAX_RUN_COST_USD, `cost_source` one of
        COST_SOURCES and `changed` a boolean (each may be null).
        """
        problem = _entry_problem(self)
        if problem is not None:
            raise ValueError(problem)

    @property
    def completed(self) -> bool:
        """True when the run produced a decision and counts towards `iterations_completed`."""
        return self.status == "completed"

    @property
    def estimated(self) -> bool:
        """True when the cost is wall time x rate, not what the orchestrator reported."""
        return self.cost_source == "estimated"

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict (key order is the file's column order); the fields
        added after the first version are left out while unset, so old lines stay as they were.
        """
        data = asdict(self)
        for key in ("cost_source", "changed"):
            if data[key] is None:
                del data[key]
        return data

    @classmethod
    def from_json(cls, data: Any) -> LogEntry:
        """Parse one decoded log line; raises ValueError naming the bad field.

        LogLineIncompleteError (a ValueError) when it is not an object or a required field
        (iteration, started_at, finished_at, cost_usd) is missing: what a torn write leaves.
        Every present field is type-checked as `__post_init__` describes; `status` defaults
        to "completed", `duration_seconds` to 0 and `scores` (null or absent) to {}.
        """
        if not isinstance(data, dict):
            raise LogLineIncompleteError("log line is not a JSON object")
        for key in ("iteration", "started_at", "finished_at", "cost_usd"):
            if key not in data:
                raise LogLineIncompleteError(f"missing field {key!r}")
        scores = data.get("scores")
        if scores is None:
            scores = {}
        if not isinstance(scores, dict):
            raise ValueError(f"scores: not an object: {_short(scores)}")
        return cls(
            iteration=data["iteration"],
            started_at=data["started_at"],
            finished_at=data["finished_at"],
            status=data.get("status", "completed"),
            decision=data.get("decision"),
            weighted_score=_as_float(data.get("weighted_score"), "weighted_score"),
            cost_usd=_as_float(data["cost_usd"], "cost_usd"),
            duration_seconds=_as_float(data.get("duration_seconds", 0.0), "duration_seconds"),
            candidate_id=data.get("candidate_id"),
            artifact_path=data.get("artifact_path"),
            scores={k: _as_float(v, f"scores.{k}") for k, v in scores.items()},
            exit_code=data.get("exit_code"),
            error=data.get("error"),
            cost_source=data.get("cost_source"),
            changed=data.get("changed"),
        )


@dataclass(frozen=True, slots=True)
class IterationResult:
    """What one iteration produced, before it is written anywhere.

    `status` is "completed" when a decision was read, "failed" otherwise (non-zero exit,
    timeout, no or invalid result). `cost_usd` is what the orchestrator reported, or None
    (the caller then charges wall time at the target's rate).
    """

    status: Literal["completed", "failed"]
    duration_s: float
    decision: str | None = None
    candidate_id: str | None = None
    artifact_path: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    weighted_score: float | None = None  # as reported by the orchestrator, if it did
    cost_usd: float | None = None
    exit_code: int | None = None
    error: str | None = None  # one line: why it failed
    failure_trace: str | None = None  # exit code and the tail of stderr (<= 64 KiB)
