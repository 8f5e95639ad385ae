"""`autoloopd status`: a read-only table of every target's state, safe while the daemon runs.

It only reads `autoloop_state.json` files (replaced atomically by the daemon, so a read never
sees half a file) and takes no lock. It never hangs: a state file that is a FIFO, a socket, a
device or a directory is never opened in a way that could block, and is reported unreadable
(exit 1) like any other file that cannot be read safely.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoloop_daemon.config.loader import load_config
from autoloop_daemon.exceptions import ConfigError, StateCorruptError
from autoloop_daemon.exit_codes import EXIT_CONFIG
from autoloop_daemon.storage.files.state_file import load_state, state_path


def target_row(name: str, state_root: Path) -> dict[str, Any]:
    """One target's figures from its state file (status "no state yet" when there is none)."""
    row: dict[str, Any] = {"target": name, "state_root": str(state_root)}
    try:
        state = load_state(state_path(state_root))
    except StateCorruptError as exc:
        row.update(status="unreadable", error=str(exc))
        return row
    if state is None:
        row.update(status="no state yet")
        return row
    history = state.get("score_history") or []
    last_score = None
    for item in reversed(history):
        if isinstance(item, dict) and item.get("weighted_score") is not None:
            last_score = item["weighted_score"]
            break
    in_flight = state.get("in_flight")
    row.update(
        status=state.get("status"),
        iterations_completed=state.get("iterations_completed"),
        max_iterations=state.get("max_iterations"),
        last_decision=state.get("last_decision"),
        best_weighted_score=state.get("best_weighted_score"),
        last_weighted_score=last_score,
        total_cost_usd=state.get("total_cost_usd"),
        max_cost_usd=state.get("max_cost_usd"),
        next_run_at=state.get("next_run_at"),
        in_flight=in_flight.get("iteration") if isinstance(in_flight, dict) else None,
        consecutive_errors=state.get("consecutive_errors"),
    )
    return row


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _fmt_score(value: Any) -> str:
    number = _finite(value)
    return "-" if number is None else f"{number:.4f}"


def _fmt_money(value: Any) -> str:
    number = _finite(value)
    return "-" if number is None else f"${number:.2f}"


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as an aligned text table."""
    header = ("TARGET", "STATUS", "ITER", "LAST", "BEST", "LAST SCORE", "COST/CAP", "NEXT RUN")
    lines = [header]
    for r in rows:
        done, cap = r.get("iterations_completed"), r.get("max_iterations")
        iteration = f"{done}/{cap}" if done is not None else "-"
        if r.get("in_flight"):
            iteration += " (running)"
        lines.append(
            (
                str(r["target"]),
                str(r.get("status") or "-"),
                iteration,
                str(r.get("last_decision") or "-"),
                _fmt_score(r.get("best_weighted_score")),
                _fmt_score(r.get("last_weighted_score")),
                f"{_fmt_money(r.get('total_cost_usd'))}/{_fmt_money(r.get('max_cost_usd'))}",
                str(r.get("next_run_at") or "-"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    errors = [f"{r['target']}: {r['error']}" for r in rows if r.get("error")]
    return "\n".join(out + errors)


def main(argv: Sequence[str]) -> int:
    """`autoloopd status` entry point; returns the exit code."""
    p = argparse.ArgumentParser(
        prog="autoloopd status", description="Show every target's state (read-only)."
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="every target of this config file")
    source.add_argument(
        "--state-root", type=Path, action="append", help="one target's state root (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    args = p.parse_args(list(argv))
    if args.config is not None:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            print(f"autoloopd: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        rows = [target_row(t.name, t.state_root) for t in cfg.targets]
    else:
        rows = [target_row(root.resolve().name, root.resolve()) for root in args.state_root]
    if args.json:
        print(json.dumps({"targets": rows}, indent=2))
    else:
        print(render_table(rows))
    return 1 if any(r.get("status") == "unreadable" for r in rows) else 0
