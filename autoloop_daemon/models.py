"""Plain data shared between modules: a target's resolved settings, log entries, results.

Nothing here does I/O; every type is a frozen dataclass so it can be passed between tasks
freely and compared in tests.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from autoloop_daemon.vocab import Mode, RunStatus

# What improvement-orchestrator discovers by itself when it is given no --source: the
# skill's memory and feedback, and the session-feedback store in the home directory.
DEFAULT_SOURCES: tuple[str, ...] = (
    ".improvement-memory/*.json",
    ".feedback/*",
    "learnings/*",
    "memory/*",
    "~/.claude/skills/session-feedback-analyzer/feedback-store/*.jsonl",
)


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
    # Passed with the handoff (each matching file after `handoff_arg`), so that handing over
    # never hides a feedback source the orchestrator would have discovered by itself.
    sources: tuple[str, ...] = DEFAULT_SOURCES
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


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


COST_SOURCES = ("reported", "estimated")


def _optional_choice(data: dict[str, Any], key: str, choices: tuple[str, ...]) -> str | None:
    value = data.get(key)
    if value is not None and value not in choices:
        raise ValueError(f"{key}: expected one of {', '.join(choices)}, found {value!r}")
    return value


def _optional_bool(data: dict[str, Any], key: str) -> bool | None:
    value = data.get(key)
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{key}: expected true, false or null, found {value!r}")
    return value


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
        """Parse one decoded log line; raises ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError("log line is not a JSON object")
        try:
            iteration = data["iteration"]
            if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 1:
                raise ValueError(f"iteration: not a positive integer: {iteration!r}")
            status = data.get("status", "completed")
            if status not in ("completed", "failed", "interrupted"):
                raise ValueError(f"status: unknown value {status!r}")
            scores_raw = data.get("scores") or {}
            if not isinstance(scores_raw, dict):
                raise ValueError("scores: not an object")
            return cls(
                iteration=iteration,
                started_at=str(data["started_at"]),
                finished_at=str(data["finished_at"]),
                status=status,
                decision=data.get("decision"),
                weighted_score=_finite_or_none(data.get("weighted_score")),
                cost_usd=float(data["cost_usd"]),
                duration_seconds=float(data.get("duration_seconds", 0.0)),
                candidate_id=data.get("candidate_id"),
                artifact_path=data.get("artifact_path"),
                scores={str(k): float(v) for k, v in scores_raw.items()},
                exit_code=data.get("exit_code"),
                error=data.get("error"),
                cost_source=_optional_choice(data, "cost_source", COST_SOURCES),
                changed=_optional_bool(data, "changed"),
            )
        except KeyError as exc:
            raise ValueError(f"missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None


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
