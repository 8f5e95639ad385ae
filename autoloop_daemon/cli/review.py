"""`autoloopd review list`: the candidates awaiting a human, read from the files.

  autoloopd review list (--config FILE | --state-root DIR ...) [--json]

Works with or without a daemon: it reads each target's `state/pending_promote.json` and
autoloopd's review log (storage/files/review_files.py), never writing either. Exit 0, or 1
when some target's queue could not be read (the line says which file and why). Verdicts are
given through the daemon: `autoloopd ctl review TARGET [ID] approve|reject [--note TEXT]`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoloop_daemon.clock import now_utc
from autoloop_daemon.exit_codes import EXIT_OK, EXIT_TARGET_ERROR
from autoloop_daemon.json_text import dumps_indented
from autoloop_daemon.storage.files.review_files import read_queue


def collect(roots: dict[str, Path]) -> list[dict[str, Any]]:
    """Every target's queue (`ReviewQueue.to_json`), targets by name."""
    now = now_utc()
    return [read_queue(root, now).to_json(name) for name, root in sorted(roots.items())]


def render(queues: list[dict[str, Any]]) -> str:
    """The queues as a table, one line per pending candidate, then the total."""
    lines = [f"{'TARGET':<20} {'ID':<44} {'CATEGORY':<10} {'RISK':<7} {'AGE':>7}  TITLE"]
    total = 0
    for queue in queues:
        if queue["problem"]:
            lines.append(f"{queue['target']:<20} unreadable: {queue['problem']}")
        for e in queue["pending"]:
            total += 1
            lines.append(
                f"{queue['target']:<20} {e['id']:<44} {e['category'] or '-':<10} "
                f"{e['risk_level'] or '-':<7} {_age(e['age_s']):>7}  {e['title'] or ''}"
            )
    noun = "candidate awaits" if total == 1 else "candidates await"
    lines.append(f"{total} {noun} review")
    return "\n".join(lines)


def _age(age_s: float | None) -> str:
    if age_s is None:
        return "?"
    if age_s < 3600:
        return f"{int(age_s // 60)}m"
    if age_s < 86400:
        return f"{age_s / 3600:.1f}h"
    return f"{age_s / 86400:.1f}d"


def _roots(args: argparse.Namespace) -> dict[str, Path]:
    if args.config is None:
        return {root.resolve().name: root.resolve() for root in args.state_root}
    from autoloop_daemon.config.loader import load_config  # pydantic: only when needed

    return {t.name: t.state_root for t in load_config(args.config).targets}


def main(argv: Sequence[str]) -> int:
    """`autoloopd review` entry point; returns the exit code."""
    p = argparse.ArgumentParser(
        prog="autoloopd review", description="Candidates held back for a human (read-only)."
    )
    sub = p.add_subparsers(dest="verb", required=True)
    listing = sub.add_parser("list", help="every candidate awaiting review")
    source = listing.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="every target of this config file")
    source.add_argument(
        "--state-root", type=Path, action="append", help="one target's state root (repeatable)"
    )
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")
    args = p.parse_args(list(argv))
    queues = collect(_roots(args))
    print(dumps_indented({"targets": queues}) if args.json else render(queues))
    return EXIT_TARGET_ERROR if any(q["problem"] for q in queues) else EXIT_OK
