"""A target's state as a typed record: the fields of `autoloop_state.json`.

`TargetState` holds the original script's schema 1.0 plus autoloopd's fields. It converts to
and from the file's JSON object (`from_json` / `to_json`); unknown fields ride along in
`extra` and are written back unchanged. Checking a file's types is the storage backend's job
(`storage/files/state_file.load_state`); `from_json` expects a checked object.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any

from autoloop_daemon.models import TargetSpec
from autoloop_daemon.score_history import ScoreHistory, ScoreItem
from autoloop_daemon.vocab import FINAL_STATUSES, TargetStatus

SCHEMA_VERSION = "1.0"


@dataclass(frozen=True, slots=True)
class InFlight:
    """The iteration that was running when the state was last saved."""

    iteration: int
    started_at: str
    pid: int | None = None  # accepted from older files; autoloopd finds runs by their marker

    def to_json(self) -> dict[str, Any]:
        """The file's `in_flight` object."""
        data: dict[str, Any] = {"iteration": self.iteration, "started_at": self.started_at}
        if self.pid is not None:
            data["pid"] = self.pid
        return data


@dataclass(slots=True)
class TargetState:
    """One target's state. Field names are the file's keys; `extra` keeps unknown ones."""

    target: str
    started_at: str | None
    max_iterations: int
    max_cost_usd: float
    plateau_window: int
    max_consecutive_errors: int
    cooldown_minutes: float
    schema_version: str = SCHEMA_VERSION
    iterations_completed: int = 0
    total_cost_usd: float = 0.0
    current_scores: dict[str, float] = field(default_factory=dict)
    score_history: Sequence[Mapping[str, Any]] = field(default_factory=list)
    plateau_counter: int = 0
    status: str = TargetStatus.IDLE
    last_failure_trace: str | None = None
    consecutive_errors: int = 0
    next_run_at: str | None = None
    in_flight: InFlight | None = None
    best_weighted_score: float | None = None
    best_iteration: int | None = None
    estimated_cost_usd: float = 0.0  # the part of total_cost_usd that is wall time x rate
    best_copy_iteration: int | None = None  # the iteration whose files are in best/
    content_hash: str | None = None  # the target's files after the last completed run
    last_decision: str | None = None
    next_iteration: int = 1
    updated_at: str | None = None
    # Operator controls (`autoloopd ctl`), kept across restarts.
    paused: bool = False
    extra_iterations: int = 0  # added to max_iterations by `ctl extend`
    extra_cost_usd: float = 0.0  # added to max_cost_usd by `ctl extend`
    # Where start-up last read the log to (storage/files/log_checkpoint.py); written only
    # when set, so the states of short logs stay as they were.
    log_checkpoint: dict[str, Any] | None = None
    # The last operator command on this target (operator_action.OperatorAction.to_json);
    # written only when set: a state without it is schema 1.0 as before.
    last_operator_action: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls, spec: TargetSpec, now_iso: str) -> TargetState:
        """A fresh state for `spec`: nothing run yet, status "idle"."""
        state = cls(
            target=str(spec.path),
            started_at=now_iso,
            max_iterations=spec.max_iterations,
            max_cost_usd=spec.max_cost_usd,
            plateau_window=spec.plateau_window,
            max_consecutive_errors=spec.max_consecutive_errors,
            cooldown_minutes=spec.cooldown_minutes,
        )
        state.updated_at = now_iso
        return state

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TargetState:
        """The state a checked file object describes (missing known fields get defaults)."""
        known = _known_fields()
        values = {k: _copy(v) for k, v in data.items() if k in known}
        extra = {k: _copy(v) for k, v in data.items() if k not in known and k != "in_flight"}
        values.setdefault("target", "")
        values.setdefault("started_at", None)
        for name in ("max_iterations", "plateau_window", "max_consecutive_errors"):
            values.setdefault(name, 0)
        values.setdefault("max_cost_usd", 0.0)
        values.setdefault("cooldown_minutes", 0.0)
        raw = data.get("in_flight")
        in_flight = (
            InFlight(raw["iteration"], raw["started_at"], raw.get("pid"))
            if isinstance(raw, dict)
            else None
        )
        return cls(**values, in_flight=in_flight, extra=extra)

    def to_json(self, *, history: bool = True) -> dict[str, Any]:
        """The file's JSON object: schema fields in the seed's order, then unknown fields.
        `history=False` leaves `score_history` empty (`encode_state` writes its items' text)."""
        data: dict[str, Any] = {
            "schema_version": self.schema_version,
            "target": self.target,
            "started_at": self.started_at,
            "iterations_completed": self.iterations_completed,
            "max_iterations": self.max_iterations,
            "total_cost_usd": self.total_cost_usd,
            "max_cost_usd": self.max_cost_usd,
            "current_scores": self.current_scores,
            "score_history": _history_json(self.score_history) if history else [],
            "plateau_counter": self.plateau_counter,
            "plateau_window": self.plateau_window,
            "status": str(self.status),
            "last_failure_trace": self.last_failure_trace,
            "consecutive_errors": self.consecutive_errors,
            "max_consecutive_errors": self.max_consecutive_errors,
            "cooldown_minutes": self.cooldown_minutes,
            "next_run_at": self.next_run_at,
            "in_flight": None if self.in_flight is None else self.in_flight.to_json(),
            "best_weighted_score": self.best_weighted_score,
            "best_iteration": self.best_iteration,
            "estimated_cost_usd": self.estimated_cost_usd,
            "best_copy_iteration": self.best_copy_iteration,
            "content_hash": self.content_hash,
            "last_decision": self.last_decision,
            "next_iteration": self.next_iteration,
            "updated_at": self.updated_at,
            "paused": self.paused,
            "extra_iterations": self.extra_iterations,
            "extra_cost_usd": self.extra_cost_usd,
        }
        if self.log_checkpoint is not None:
            data["log_checkpoint"] = dict(self.log_checkpoint)
        if self.last_operator_action is not None:
            data["last_operator_action"] = copy.deepcopy(self.last_operator_action)
        for key, value in self.extra.items():
            data.setdefault(key, value)
        return data

    def apply_limits(self, spec: TargetSpec) -> bool:
        """Take the target's path and limits from `spec` (in place); True if one changed."""
        before = self._limits()
        self.target = str(spec.path)
        self.max_iterations = spec.max_iterations
        self.max_cost_usd = spec.max_cost_usd
        self.plateau_window = spec.plateau_window
        self.max_consecutive_errors = spec.max_consecutive_errors
        self.cooldown_minutes = spec.cooldown_minutes
        return self._limits() != before

    def _limits(self) -> tuple[object, ...]:
        return (
            self.target, self.max_iterations, self.max_cost_usd, self.plateau_window,
            self.max_consecutive_errors, self.cooldown_minutes,
        )  # fmt: skip

    @property
    def known_status(self) -> TargetStatus | None:
        """`status` as a TargetStatus, or None for a word this version does not know."""
        try:
            return TargetStatus(self.status)
        except ValueError:
            return None

    @property
    def is_final(self) -> bool:
        """True when the saved status is a stop condition."""
        return self.known_status in FINAL_STATUSES


_SCALARS = frozenset({str, int, float, bool, type(None)})


@cache
def _known_fields() -> frozenset[str]:
    """The state's field names that a file's keys map to (all but `extra` and `in_flight`)."""
    return frozenset(f.name for f in fields(TargetState)) - {"extra", "in_flight"}


def _copy(value: Any) -> Any:
    """`value` deep-copied; a scalar (most of a state) is immutable and returned as is, which
    makes loading 10,000 states at start-up ~3x faster than a `deepcopy` of each value."""
    return value if type(value) in _SCALARS else copy.deepcopy(value)


def _history_json(history: Sequence[Mapping[str, Any]]) -> list[Any]:
    """score_history as the file's objects: a runner's history decoded at once, a list
    (read from a file, or both kinds) item by item."""
    if isinstance(history, ScoreHistory):
        return history.to_json()
    return [item.to_json() if isinstance(item, ScoreItem) else item for item in history]
