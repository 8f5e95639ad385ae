"""The human summary `autoloopd --config F --check` prints."""

from __future__ import annotations

from autoloop_daemon.config.loader import AppConfig
from autoloop_daemon.config.settings import _quote


def check_summary(cfg: AppConfig) -> str:
    """Human multi-line summary for `autoloopd --config F --check`: file, state_dir, budget
    cap, concurrency, then one line per target."""
    lines = [
        f"config:      {cfg.path}",
        f"state_dir:   {cfg.daemon.state_dir}",
        f"budget:      ${cfg.budget.max_cost_usd:,.2f} shared cap "
        f"(${cfg.budget.cost_per_minute_usd:.2f}/min estimate when unreported)",
        f"concurrency: {cfg.daemon.max_concurrent_iterations} iteration(s) at once, "
        f"{cfg.daemon.shutdown_grace_seconds:g}s shutdown grace",
        f"targets:     {len(cfg.targets)}",
    ]
    for i, alert in enumerate(cfg.alerts):
        via = " and ".join(
            w for w, on in (("command", alert.command), ("url", alert.url)) if on is not None
        )
        lines.append(f"alerts[{i}]:   {', '.join(alert.events)} via {via}")
    for t in cfg.targets:
        if t.mode == "scheduled":
            timing = f"schedule {_quote(t.schedule or '')}"
        elif t.mode == "continuous":
            timing = f"cooldown {t.cooldown_minutes:g} min"
        else:
            timing = "no cooldown"
        runner = (
            f"dry_run (simulator, seed {t.seed})"
            if t.dry_run
            else "orchestrator " + " ".join(t.orchestrator[:2])
        )
        lines.append(
            f"  - {t.name}: {t.mode}, path {t.path}, state {t.state_root}, "
            f"max_iterations {t.max_iterations}, max_cost ${t.max_cost_usd:,.2f}, "
            f"{timing}, {runner}"
        )
    return "\n".join(lines)
