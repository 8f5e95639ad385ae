"""The command line of the daemon and one-target forms: the parser and its value types.

The one-target flags are the original `autoloop.py`'s, with the same defaults; each bad value
is an argparse error naming the flag (exit 2).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from autoloop_daemon import __version__
from autoloop_daemon.config.settings import check_template_arg
from autoloop_daemon.policy.deadline import check_deadline


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


WINDOW_MAX = 1_000_000  # as the config's plateau_window and oscillation_window


def _window(text: str) -> int:
    """A plateau or oscillation window: 0 (the check is off) up to WINDOW_MAX, as in a config."""
    value = int(text)
    if not 0 <= value <= WINDOW_MAX:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 0 (off) to {WINDOW_MAX}, got {text}"
        )
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _score(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a score between 0 and 1, got {text}")
    return value


def _deadline(text: str) -> str:
    try:
        return check_deadline(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _command(text: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"cannot split command line: {exc}") from None
    if not argv:
        raise argparse.ArgumentTypeError("empty command")
    for part in argv:
        try:
            check_template_arg(part)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return argv


def _globs(text: str) -> tuple[str, ...]:
    return tuple(filter(None, (p.strip() for p in text.split(","))))


def _weights(text: str) -> tuple[tuple[str, float], ...]:
    pairs = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT, got {item!r}")
        pairs.append((name.strip(), _non_negative_float(value)))
    return tuple(sorted(pairs))


def build_parser() -> argparse.ArgumentParser:
    """The parser of the daemon and one-target forms."""
    p = argparse.ArgumentParser(
        prog="autoloopd",
        description="Keep AI improvement loops running unattended, crash-safe and within budget.",
        epilog="Also: 'autoloopd status --help', 'autoloopd ctl --help', "
        "'autoloopd report --help'.",
    )
    p.add_argument("--version", action="version", version=f"autoloopd {__version__}")
    daemon = p.add_argument_group("daemon")
    daemon.add_argument("--config", type=Path, help="run every target of this TOML file")
    daemon.add_argument(
        "--check", action="store_true", help="validate --config, print a summary, exit"
    )
    _original_flags(p.add_argument_group("one target (the original autoloop.py flags)"))
    _runner_flags(p.add_argument_group("one target: how it runs"))
    logs = p.add_argument_group("logging")
    logs.add_argument("--log-format", choices=("auto", "json", "console"), default=None)
    logs.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=None)
    return p


def _original_flags(one: Any) -> None:
    """The original script's flags, with its defaults."""
    one.add_argument("--target", type=Path, help="the directory being improved")
    one.add_argument("--state-root", type=Path, help="where state, logs and handoffs go")
    one.add_argument("--max-iterations", type=_positive_int, default=5)
    one.add_argument(
        "--max-cost",
        type=_positive_float,
        default=None,
        help="cost cap in USD for this target (default 50.0)",
    )
    one.add_argument(
        "--max-iteration-cost",
        type=_positive_float,
        default=None,
        help="USD one iteration may cost: reserved per run, and a run is stopped when its "
        "live cost (wall time at the rate, or the orchestrator's progress lines) reaches it",
    )
    one.add_argument(
        "--plateau-window",
        type=_window,
        default=3,
        help="iterations without a new best score that stop the target (0: off; default 3)",
    )
    one.add_argument("--min-improvement", type=_non_negative_float, default=0.0)
    one.add_argument("--oscillation-window", type=_window, default=4)
    one.add_argument("--cooldown-minutes", type=_non_negative_float, default=30.0)
    one.add_argument(
        "--mode", choices=("single-run", "continuous", "scheduled"), default="single-run"
    )
    one.add_argument("--max-consecutive-errors", type=_positive_int, default=3)


def _runner_flags(one: Any) -> None:
    """autoloopd's own one-target flags: simulator, commands, timeouts, money, goals."""
    one.add_argument("--dry-run", action="store_true", help="use the built-in simulator")
    one.add_argument("--seed", type=int, default=0, help="simulator seed (with --dry-run)")
    one.add_argument(
        "--orchestrator-cmd",
        type=_command,
        default=None,
        help="orchestrator command line (split like a shell, never run by one); "
        "placeholders {target} {state_root} {iteration}",
    )
    one.add_argument("--scorer-cmd", type=_command, default=None, help="scorer command line")
    one.add_argument(
        "--handoff-arg",
        default="--source",
        help="flag that passes the previous handoff ('' to disable)",
    )
    one.add_argument(
        "--sources",
        type=_globs,
        default=None,
        help="comma-separated globs (relative to the target, ~ allowed) of feedback files "
        "passed after --handoff-arg together with the handoff ('' for none; default: what "
        "improvement-orchestrator would discover by itself when given no --source)",
    )
    one.add_argument("--iteration-timeout-minutes", type=_positive_float, default=60.0)
    one.add_argument(
        "--cost-per-minute",
        type=_non_negative_float,
        default=0.10,
        help="USD per minute charged when the orchestrator reports no cost",
    )
    one.add_argument("--weights", type=_weights, default=(), help="e.g. accuracy=2,coverage=1")
    _timing_flags(one)
    _goal_flags(one)


def _timing_flags(one: Any) -> None:
    """The one-target form's waits and graces."""
    one.add_argument("--shutdown-grace-seconds", type=_non_negative_float, default=30.0)
    one.add_argument(
        "--retry-backoff-seconds",
        type=_non_negative_float,
        default=5.0,
        help="delay before retrying a failed iteration, doubling with each further "
        "consecutive failure (default 5)",
    )
    one.add_argument(
        "--term-grace-seconds",
        type=_non_negative_float,
        default=10.0,
        help="time an orchestrator's process group gets between SIGTERM and SIGKILL "
        "when it is stopped (default 10)",
    )
    one.add_argument(
        "--simulated-seconds",
        type=_non_negative_float,
        default=0.2,
        help="wall time of one simulated iteration (with --dry-run)",
    )


def _goal_flags(one: Any) -> None:
    """The one-target form's goals: yield, score and deadline stops."""
    one.add_argument(
        "--min-gain-per-usd",
        type=_non_negative_float,
        default=0.0,
        help="stop (stopped_low_yield) when the estimated gain per dollar of the next "
        "iteration falls below this (0: off)",
    )
    one.add_argument(
        "--target-score",
        type=_score,
        default=None,
        help="stop (stopped_target_reached) once the best weighted score reaches this",
    )
    one.add_argument(
        "--deadline",
        type=_deadline,
        default=None,
        help="no new iteration after this local time of day (HH:MM, daily) or ISO "
        "timestamp (stopped_deadline)",
    )
    one.add_argument(
        "--restore-best",
        action="store_true",
        help="when a reviewer rejects a held-back candidate, put the target's files back to "
        "the best version (<state-root>/best/); config: restore_best_on_reject",
    )
