"""`autoloopd report`: write the morning report of a fleet from its files alone.

    autoloopd report (--config FILE | --state-root DIR ...) --output FILE [--format html|md]

The daemon need not run and is not disturbed: nothing is locked or changed. The format
defaults to the output's suffix (`.md` gives Markdown), else HTML; `--output -` prints it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from autoloop_daemon.config.loader import load_config
from autoloop_daemon.exceptions import StateWriteError
from autoloop_daemon.exit_codes import EXIT_IOERR, EXIT_OK
from autoloop_daemon.report.html import render_html
from autoloop_daemon.report.markdown import render_markdown
from autoloop_daemon.report.reader import read_fleet
from autoloop_daemon.storage.files.fsio import atomic_write_bytes


def build_parser() -> argparse.ArgumentParser:
    """The parser of `autoloopd report`."""
    p = argparse.ArgumentParser(
        prog="autoloopd report",
        description="Write a self-contained report of every target from its files "
        "(no daemon needed, nothing is locked or changed).",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="every target of this config file")
    source.add_argument(
        "--state-root", type=Path, action="append", help="one target's state root (repeatable)"
    )
    p.add_argument("--output", required=True, help="the file to write ('-' for stdout)")
    p.add_argument(
        "--format",
        choices=("html", "md"),
        default=None,
        help="html (plots inline) or md (no plots); default from the --output suffix, else html",
    )
    return p


def main(argv: Sequence[str]) -> int:
    """`autoloopd report` entry point; returns the exit code."""
    args = build_parser().parse_args(list(argv))
    if args.config is not None:
        cfg = load_config(args.config)  # a ConfigError is reported by cli/main.py (78)
        targets = [(t.name, t.state_root) for t in cfg.targets]
        source = str(cfg.path)
    else:
        roots = [root.expanduser().resolve() for root in args.state_root]
        targets = [(root.name, root) for root in roots]
        source = ", ".join(str(root) for root in roots)
    fmt = args.format or ("md" if str(args.output).lower().endswith(".md") else "html")
    report = read_fleet(targets, source)
    text = render_markdown(report) if fmt == "md" else render_html(report)
    if args.output == "-":
        sys.stdout.write(text)
        return EXIT_OK
    try:
        atomic_write_bytes(Path(args.output).expanduser(), text.encode("utf-8"), durable=False)
    except StateWriteError as exc:
        print(f"autoloopd: --output: {exc}", file=sys.stderr)
        return EXIT_IOERR
    print(f"report written to {args.output} ({len(report.targets)} target(s), {fmt})")
    return EXIT_OK
