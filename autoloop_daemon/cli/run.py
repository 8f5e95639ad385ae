"""The daemon and one-target forms of `autoloopd` (their parser is cli/parser.py).

  autoloopd --config FILE [--check]          the daemon (every target in FILE)
  autoloopd --target DIR --state-root DIR    one target, the original script's flags

Imported by cli/main.py only for these forms: they need the settings schema and the whole
runtime, which the subcommands (`status`, `ctl`, ...) do without.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import anyio
import structlog

from autoloop_daemon import early_signals
from autoloop_daemon.cli.main import report_error
from autoloop_daemon.cli.parser import build_parser
from autoloop_daemon.cli.quick_exit import exit_quickly
from autoloop_daemon.cli.serve import serve
from autoloop_daemon.config.loader import AppConfig, load_config
from autoloop_daemon.config.open_files import fit_open_file_limit, limit_problem
from autoloop_daemon.config.preflight import target_problems, writable_dir_problem
from autoloop_daemon.config.settings import REFERENCE_ORCHESTRATOR
from autoloop_daemon.config.summary import check_summary
from autoloop_daemon.control.settings import control_settings, stay_up_when_idle
from autoloop_daemon.engine.events import EventBus
from autoloop_daemon.engine.hosting import Hosting, LocalHosting
from autoloop_daemon.engine.records import ReloadedConfig
from autoloop_daemon.engine.signals import hold_early_hangups
from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.exceptions import ConfigError
from autoloop_daemon.exit_codes import EXIT_CONFIG, EXIT_OK
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.observers.alerts import Alerter
from autoloop_daemon.observers.console import Console, shutdown_notice
from autoloop_daemon.observers.logs import configure_logging
from autoloop_daemon.observers.sdnotify import Notifier
from autoloop_daemon.policy.first_fit import first_run_problem
from autoloop_daemon.runs.leftovers import MarkedLeftovers
from autoloop_daemon.storage.base import Storage
from autoloop_daemon.storage.files.lock import resolve_state_root
from autoloop_daemon.storage.files.store import FileStorage

DEFAULT_CAP_WARNING = "Default $50 cap applies. For overnight runs, explicitly set --max-cost."


def _spec_from_flags(args: argparse.Namespace) -> TargetSpec:
    target: Path = args.target.expanduser().resolve()
    state_root = resolve_state_root(args.state_root)  # a symlinked root is refused, not followed
    if not target.is_dir():
        raise ConfigError(f"--target: not a directory: {args.target}")
    if state_root.exists() and not state_root.is_dir():
        raise ConfigError(f"--state-root: not a directory: {args.state_root}")
    if args.oscillation_window < 0 or args.oscillation_window == 1:
        raise ConfigError("--oscillation-window: must be 0 (off) or >= 2")
    return TargetSpec(
        name=target.name or "target",
        path=target,
        state_root=state_root,
        mode=args.mode,
        max_iterations=args.max_iterations,
        max_cost_usd=50.0 if args.max_cost is None else args.max_cost,
        max_iteration_cost_usd=args.max_iteration_cost,
        plateau_window=args.plateau_window,
        min_improvement=args.min_improvement,
        oscillation_window=args.oscillation_window,
        cooldown_minutes=args.cooldown_minutes,
        max_consecutive_errors=args.max_consecutive_errors,
        iteration_timeout_minutes=args.iteration_timeout_minutes,
        orchestrator=args.orchestrator_cmd or REFERENCE_ORCHESTRATOR,
        scorer=args.scorer_cmd,
        handoff_arg=args.handoff_arg or None,
        sources=args.sources,
        weights=args.weights,
        dry_run=args.dry_run,
        seed=args.seed,
        cost_per_minute_usd=args.cost_per_minute,
        simulated_seconds=args.simulated_seconds,
        backoff_base_seconds=args.retry_backoff_seconds,
        term_grace_seconds=args.term_grace_seconds,
        min_gain_per_usd=args.min_gain_per_usd,
        target_score=args.target_score,
        deadline=args.deadline,
        restore_best_on_reject=args.restore_best,
    )


def _echo(line: str) -> None:
    print(line, flush=True)


def _run_one_target(args: argparse.Namespace) -> int:
    spec = _spec_from_flags(args)
    problems = target_problems(spec, "--orchestrator-cmd")
    if problems:
        hint = "" if args.orchestrator_cmd else " (give --orchestrator-cmd, or --dry-run)"
        raise ConfigError(
            problems[0]
            .replace("--orchestrator-cmd.orchestrator", "--orchestrator-cmd")
            .replace("--orchestrator-cmd.scorer", "--scorer-cmd")
            + hint
        )
    configure_logging(args.log_format or "auto", args.log_level or "warning", stream=sys.stderr)
    if spec.mode == "continuous" and args.max_cost is None:
        _echo(DEFAULT_CAP_WARNING)
    events = EventBus()
    events.subscribe(Console(_echo))
    if sys.stdout.isatty():
        events.subscribe(shutdown_notice(_echo))
    supervisor = Supervisor(
        [spec],
        storage=FileStorage(None, leftovers=MarkedLeftovers()),
        budget_cap_usd=math.inf,  # one target: its own cap (max_cost_usd) is the limit
        max_concurrent=1,
        grace_s=args.shutdown_grace_seconds,
        hosting=LocalHosting(),
        events=events,
        one_shot=spec.mode == "scheduled",
        strict=True,
    )
    return anyio.run(serve, supervisor, Notifier())


def _reloader(path: Path) -> ReloadedConfig:
    cfg = load_config(path)
    return ReloadedConfig(
        cfg.targets,
        cfg.budget.lifetime_cap_usd,
        cfg.daemon.max_concurrent_iterations,
        cfg.daemon.shutdown_grace_seconds,
        cfg.budget.budget_window(),
    )


def _budget_problems(cfg: AppConfig) -> list[str]:
    """Targets whose first run can never fit the budget (policy/first_fit.py)."""
    window = cfg.budget.budget_window()
    window_cap = math.inf if window is None else window.cap_usd
    cap = cfg.budget.lifetime_cap_usd
    return [
        f"targets[{i}] ({t.name}): {problem}"
        for i, t in enumerate(cfg.targets)
        if (problem := first_run_problem(t, cap, window_cap)) is not None
    ]


def _check(cfg: AppConfig) -> int:
    """`--check`: print the summary and every problem found; 0, or 78 with problems."""
    problems = [p for i, t in enumerate(cfg.targets) for p in target_problems(t, f"targets[{i}]")]
    problems += _budget_problems(cfg)
    state_dir = writable_dir_problem(cfg.daemon.state_dir, "daemon.state_dir")
    problems += [state_dir] if state_dir else []
    files = limit_problem(len(cfg.targets), cfg.daemon.max_concurrent_iterations)
    problems += [files] if files else []
    if cfg.cluster.enabled:
        from autoloop_daemon.cluster.connect import check_cluster

        database = check_cluster(cfg)
        problems += [database] if database else []
    print(check_summary(cfg))
    if problems:
        for problem in problems:
            report_error(f"{cfg.path}: {problem}")
        return EXIT_CONFIG
    return EXIT_OK


def _run_daemon(args: argparse.Namespace) -> int:
    hold_early_hangups()  # a SIGHUP during start-up is applied after READY
    cfg: AppConfig = load_config(args.config)
    if args.check:
        early_signals.release()  # no signal task here: Ctrl+C and SIGTERM act as usual
        return _check(cfg)
    configure_logging(
        args.log_format or cfg.daemon.log_format, args.log_level or cfg.daemon.log_level
    )
    fit_open_file_limit(len(cfg.targets), cfg.daemon.max_concurrent_iterations)
    structlog.get_logger("autoloopd").info(
        "daemon_starting", config=str(cfg.path), targets=len(cfg.targets), pid=os.getpid()
    )
    # On a terminal (and not forced to JSON): the live view and the Ctrl+C notice.
    live = sys.stdout.isatty() and (args.log_format or cfg.daemon.log_format) != "json"

    async def serve_on(storage: Storage, hosting: Hosting) -> int:
        supervisor = Supervisor(
            cfg.targets,
            stay_up=stay_up_when_idle(cfg.daemon.exit_when_idle),
            storage=storage,
            budget_cap_usd=cfg.budget.lifetime_cap_usd,
            window=cfg.budget.budget_window(),
            allocation=cfg.budget.allocation,
            max_concurrent=cfg.daemon.max_concurrent_iterations,
            grace_s=cfg.daemon.shutdown_grace_seconds,
            reloader=lambda: _reloader(cfg.path),
            hosting=hosting,
        )
        alerter = (
            Alerter(cfg.alerts, state_dir=cfg.daemon.state_dir, snapshot=supervisor.snapshot)
            if cfg.alerts
            else None
        )
        return await serve(supervisor, Notifier(), alerter, control_settings(cfg), live=live)

    if cfg.cluster.enabled:
        from autoloop_daemon.cluster.connect import serve_in_cluster

        return anyio.run(partial(serve_in_cluster, cfg, serve_on))
    code = anyio.run(
        serve_on, FileStorage(cfg.daemon.state_dir, leftovers=MarkedLeftovers()), LocalHosting()
    )
    return exit_quickly(code)  # every checkpoint is durable: skip freeing the heap (0.5 s)


def main(argv: Sequence[str]) -> int:
    """The daemon or one-target form for `argv`; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if args.check and args.config is None:
        parser.error("--check needs --config FILE")
    if args.config is not None and args.target is not None:
        parser.error("use either --config FILE or --target DIR --state-root DIR, not both")
    if args.config is None and (args.target is None or args.state_root is None):
        parser.error("give --config FILE, or --target DIR and --state-root DIR")
    if args.config is not None:
        return _run_daemon(args)
    return _run_one_target(args)
