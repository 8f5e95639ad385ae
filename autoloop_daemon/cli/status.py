"""`autoloopd status`: whether a daemon runs, and every target's state, told truthfully.

It asks the daemon's control socket first, finding the socket from the config's `[daemon]`
table alone (control/quick_socket.py): one request, `GET /api/status/report`, whose answer
is what it prints, made by the daemon and printed unparsed whatever the number of targets.
With `--state-root` (or a daemon without that route) it builds the report from
`/api/status` and `/api/reviews` (status_report.py). When nothing answers it falls back to
the files (cli/status_files.py). Exit 0 when a daemon runs, 3 when none does (as
`systemctl status`), 1 when a state file is unreadable. The JSON keys are documented in
docs/design.md ("Status JSON").

Asking the daemon is the common case and must cost little more than starting Python: this
module imports neither the settings schema (pydantic) nor the runtime; the whole config
and the files are imported only on the way to the files (`_from_files`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from autoloop_daemon.control.client import NotRunningError, request, request_bytes
from autoloop_daemon.control.quick_socket import quick_socket
from autoloop_daemon.exit_codes import EXIT_NOT_RUNNING, EXIT_OK, EXIT_TARGET_ERROR
from autoloop_daemon.zone_key import is_zone_key

# The report's own modules (status_report, status_text, status_reviews: ~14 ms of imports,
# a fifth of a `status` run) are imported only on the way that builds the report here.

SOCKET_TIMEOUT_S = 10.0


# ------------------------------------------------------------------ from the daemon


def _printed(sock: Path, form: str, every_row: bool) -> bytes | None:
    """What `status` prints, as the daemon on `sock` made it (`GET /api/status/report`), or
    None when no daemon answers it there (or one too old to have that route)."""
    try:
        str(sock).encode()
    except UnicodeEncodeError:  # not UTF-8: the daemon could not echo it; ask as before
        return None
    # The text's times in this terminal's zone, as a local rendering shows them.
    fields: dict[str, object] = {"form": form, "all": int(every_row), "socket": str(sock)}
    fields["utc_offset"] = time.localtime().tm_gmtoff
    if (key := _zone_key()) is not None:
        fields["tz"] = key
    query = urlencode(fields)
    try:
        code, body = request_bytes(
            sock, "GET", f"/api/status/report?{query}", timeout=SOCKET_TIMEOUT_S
        )
    except (NotRunningError, PermissionError):
        return None
    return body if code == 200 else None


# ------------------------------------------------------------------ the command


def collect(
    roots: dict[str, Path], sock: Path | None, lock_dirs: Sequence[Path], cap: float | None
) -> dict[str, Any]:
    """The status report: from the daemon's socket when it answers, else from the files."""
    why = "no control socket configured"
    if sock is not None:
        report, why = _ask(sock, roots)
        if report is not None:
            return report
    return _from_files(roots, lock_dirs, cap, why)


def _ask(sock: Path, roots: dict[str, Path]) -> tuple[dict[str, Any] | None, str]:
    """The report from the daemon on `sock`, or None and why it gave none."""
    try:
        code, payload = request(sock, "GET", "/api/status", timeout=SOCKET_TIMEOUT_S)
    except NotRunningError as exc:
        return None, str(exc)
    except PermissionError as exc:
        return None, f"permission denied on {sock} ({exc.strerror})"
    if code != 200 or not isinstance(payload, dict):
        return None, f"the control socket answered {code}"
    from autoloop_daemon.status_report import from_daemon

    return from_daemon(payload, str(sock), roots), ""


def _from_files(
    roots: dict[str, Path], lock_dirs: Sequence[Path], cap: float | None, why: str
) -> dict[str, Any]:
    from autoloop_daemon.cli import status_files as files  # only without a daemon

    pid = next((p for p in map(files.lock_holder, lock_dirs) if p is not None), None)
    gone = None if pid is not None else files.absence(lock_dirs, list(roots.values()))
    rows = [files.target_row(n, root, gone=gone) for n, root in sorted(roots.items())]
    note = f"last known state from the files; {why}"
    return {
        "daemon": files.not_running(pid, note, gone),
        "budget": files.file_budget(rows, cap),
        "targets": rows,
    }


def _from_config(config: Path, sock: Path | None) -> dict[str, Any]:
    """The report for every target of `config`, the whole config read (and checked)."""
    from autoloop_daemon.config.loader import load_config
    from autoloop_daemon.control.settings import socket_path  # pydantic: slow to import

    cfg = load_config(config)  # a ConfigError is reported by cli/main.py (78)
    roots = {t.name: t.state_root for t in cfg.targets}
    lock_dirs = [cfg.daemon.state_dir, *roots.values()]
    lifetime = cfg.budget.lifetime_cap_usd
    cap = lifetime if math.isfinite(lifetime) else None
    report = collect(roots, sock or socket_path(cfg), lock_dirs, cap)
    if cfg.cluster.dsn is not None and report["daemon"]["source"] == "files":
        from autoloop_daemon.cli.status_cluster import with_cluster

        c = cfg.cluster
        limits = {t.name: t.max_iterations for t in cfg.targets}
        report = with_cluster(report, cfg.cluster.dsn, c.host, c.lease_seconds, limits)
    return report


def _zone_key() -> str | None:
    """This terminal's IANA zone name when it has one (`TZ`, else the link /etc/localtime),
    for the daemon to render the text's times with its daylight-saving rules."""
    tz = os.environ.get("TZ")
    if tz is not None:
        key = tz.removeprefix(":")
    else:
        try:
            _, found, key = os.readlink("/etc/localtime").rpartition("zoneinfo/")
        except OSError:
            return None
        if not found:
            return None
    return key if is_zone_key(key) else None


def _write_all(data: bytes) -> None:
    """`data` on stdout, every byte: a buffered write can return having written part of it
    (a pipe whose reader left took 64 kB of 1.3 MB, without an error); the next write
    raises BrokenPipeError (cli/main.py: exit 141)."""
    out = sys.stdout.buffer
    view = memoryview(data)
    while view:
        view = view[out.write(view) :]
    out.flush()


def main(argv: Sequence[str]) -> int:
    """`autoloopd status` entry point; returns the exit code."""
    p = argparse.ArgumentParser(
        prog="autoloopd status",
        description="Is a daemon running, and where is each target (read-only).",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="every target of this config file")
    source.add_argument(
        "--state-root", type=Path, action="append", help="one target's state root (repeatable)"
    )
    p.add_argument("--socket", type=Path, help="ask the daemon on this control socket")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument(
        "--all",
        action="store_true",
        help="list every target (default: only those not quietly waiting for their turn)",
    )
    args = p.parse_args(list(argv))
    if args.config is not None:
        sock = args.socket or quick_socket(args.config, os.environ)
        form = "json" if args.json else "text"
        if sock is not None and (body := _printed(sock, form, args.all)) is not None:
            _write_all(body)  # as the daemon made it: one request, no parsing
            return EXIT_OK
        report = None if sock is None else _ask(sock, {})[0]  # a daemon older than the route
        if report is None:  # no daemon answered: the targets' tables are needed after all
            report = _from_config(args.config, args.socket)
    else:
        roots = {root.resolve().name: root.resolve() for root in args.state_root}
        report = collect(roots, args.socket, list(roots.values()), None)
    return _print_report(report, as_json=args.json, every_row=args.all)


def _print_report(report: dict[str, Any], *, as_json: bool, every_row: bool) -> int:
    """Print a report built here (with the review queues) and return the exit code."""
    from autoloop_daemon.cli.status_reviews import with_reviews
    from autoloop_daemon.json_text import dumps_indented
    from autoloop_daemon.status_text import render_text

    report = with_reviews(report)
    if as_json:
        print(dumps_indented(report))
    else:
        print(render_text(report, every_row=every_row))
    if any(r.get("status") == "unreadable" for r in report["targets"]):
        return EXIT_TARGET_ERROR
    return EXIT_OK if report["daemon"]["running"] else EXIT_NOT_RUNNING


__all__ = ["collect", "main"]
