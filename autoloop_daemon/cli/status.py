"""`autoloopd status`: whether a daemon runs, and every target's state, told truthfully.

It asks the daemon's control socket first (one request, whatever the number of targets).
When nothing answers it falls back to the files: the lock file says whether a daemon holds
the state directory (its pid, checked in /proc; no lock is taken, so a running daemon is
never disturbed) and each `autoloop_state.json` (replaced atomically, never seen half
written) gives the target's last known state. Exit 0 when a daemon runs, 3 when none does
(as `systemctl status`), 1 when a state file is unreadable. The JSON keys are documented in
docs/design.md ("Status JSON"). It never hangs: a
state file that is a FIFO, a socket, a device or a directory is never opened in a way
that could block, and is reported unreadable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoloop_daemon.cli.client import NotRunningError, request
from autoloop_daemon.cli.control import quick_socket, socket_path
from autoloop_daemon.clock import parse_iso
from autoloop_daemon.config.loader import load_config
from autoloop_daemon.exceptions import StateCorruptError
from autoloop_daemon.exit_codes import EXIT_NOT_RUNNING, EXIT_OK, EXIT_TARGET_ERROR
from autoloop_daemon.policy.stops import STOP_MESSAGES
from autoloop_daemon.runtime.snapshot import first_line
from autoloop_daemon.storage.files.lock import LOCK_NAME
from autoloop_daemon.storage.files.regular import read_regular
from autoloop_daemon.storage.files.state_file import load_state, state_path
from autoloop_daemon.vocab import TargetStatus

SOCKET_TIMEOUT_S = 10.0
ROW_KEYS = (
    "target", "status", "paused", "reason", "last_error", "iterations_completed",
    "max_iterations", "running_iteration", "running_for_s", "in_flight",
    "best_weighted_score", "last_weighted_score", "last_decision", "total_cost_usd",
    "max_cost_usd", "estimated", "next_run_at", "consecutive_errors", "state_root", "host",
)  # fmt: skip


def _row(**values: Any) -> dict[str, Any]:
    row = dict.fromkeys(ROW_KEYS)
    row.update(values)
    return row


# ------------------------------------------------------------------ from the files


def _file_reason(state: dict[str, Any]) -> str | None:
    status = state.get("status")
    extra_n, extra_usd = state.get("extra_iterations") or 0, state.get("extra_cost_usd") or 0.0
    if status == TargetStatus.ERROR:
        last = first_line(state.get("last_failure_trace")) or "unknown error"
        return f"circuit breaker tripped; last: {last}"
    if status == TargetStatus.STOPPED_SIGNAL:
        return "interrupted by signal"
    if status == TargetStatus.STOPPED_REMOVED:
        return "removed from the configuration"
    if status == TargetStatus.STOPPED_BUDGET:
        return "shared budget exhausted"
    if status == TargetStatus.WAITING_BUDGET:
        return f"budget window spent; resumes at {state.get('next_run_at')}"
    template = STOP_MESSAGES.get(str(status))
    if template is None:
        return None
    return template.format(
        done=state.get("iterations_completed"),
        n=(state.get("max_iterations") or 0) + extra_n,
        cost=state.get("total_cost_usd") or 0.0,
        cap=(state.get("max_cost_usd") or 0.0) + extra_usd,
        window=state.get("plateau_window"),
        osc="",
    )


def target_row(name: str, state_root: Path, *, now: float | None = None) -> dict[str, Any]:
    """One target's last known state from its state file ("no state yet" without one)."""
    row = _row(target=name, state_root=str(state_root))
    try:
        state = load_state(state_path(state_root))
    except StateCorruptError as exc:
        row.update(status="unreadable", error=str(exc))
        return row
    if state is None:
        row.update(status="no state yet")
        return row
    last_score = None
    for item in reversed(state.get("score_history") or []):
        if isinstance(item, dict) and item.get("weighted_score") is not None:
            last_score = item["weighted_score"]
            break
    in_flight = state.get("in_flight")
    running = in_flight.get("iteration") if isinstance(in_flight, dict) else None
    started = parse_iso(in_flight.get("started_at")) if isinstance(in_flight, dict) else None
    now = time.time() if now is None else now
    row.update(
        status=state.get("status"),
        paused=bool(state.get("paused")),
        reason=_file_reason(state),
        last_error=first_line(state.get("last_failure_trace")),
        iterations_completed=state.get("iterations_completed"),
        max_iterations=(state.get("max_iterations") or 0) + (state.get("extra_iterations") or 0),
        running_iteration=running,
        running_for_s=None if started is None else round(now - started.timestamp(), 3),
        in_flight=running,
        best_weighted_score=state.get("best_weighted_score"),
        last_weighted_score=last_score,
        last_decision=state.get("last_decision"),
        total_cost_usd=state.get("total_cost_usd"),
        max_cost_usd=(state.get("max_cost_usd") or 0.0) + (state.get("extra_cost_usd") or 0.0),
        estimated=(state.get("estimated_cost_usd") or 0.0) > 0,
        next_run_at=state.get("next_run_at"),
        consecutive_errors=state.get("consecutive_errors"),
    )
    return row


def lock_holder(directory: Path) -> int | None:
    """The pid of a live autoloopd holding `directory`'s lock file, read without locking."""
    try:
        text = read_regular(directory / LOCK_NAME, limit=64).decode("ascii", "replace").strip()
    except OSError:
        return None
    if not text.isdigit():
        return None  # released locks are truncated
    pid = int(text)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    alive = stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])
    return pid if alive and b"autoloop" in cmdline else None


def _not_running(pid: int | None, why: str) -> dict[str, Any]:
    return {
        "running": pid is not None,
        "pid": pid,
        "started_at": None,
        "uptime_s": None,
        "ready": None,
        "shutting_down": None,
        "source": "files",
        "note": why,
    }


def _file_budget(rows: Sequence[dict[str, Any]], cap: float | None) -> dict[str, Any]:
    spent = round(sum(r.get("total_cost_usd") or 0.0 for r in rows), 6)
    return {
        "spent_usd": spent,
        "reserved_usd": 0.0,
        "cap_usd": cap,
        "remaining_usd": None if cap is None else round(max(0.0, cap - spent), 6),
    }


# ------------------------------------------------------------------ from the daemon


def _daemon_rows(payload: dict[str, Any], roots: dict[str, Path]) -> list[dict[str, Any]]:
    rows = []
    for t in payload["targets"]:
        name = t["target"]
        location = Path(t.get("state_location") or ".")
        root = roots.get(name, location.parent if location.suffix == ".json" else location)
        rows.append(
            _row(
                **{k: t.get(k) for k in ROW_KEYS if k in t},
                in_flight=t.get("running_iteration"),
                state_root=str(root),
            )
        )
    return rows


# ------------------------------------------------------------------ rendering


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


def _fmt_money(value: Any, estimated: bool = False) -> str:
    number = _finite(value)
    return "-" if number is None else f"{'~' if estimated else ''}${number:.2f}"


def _fmt_local(iso: Any) -> str:
    when = parse_iso(iso) if isinstance(iso, str) else None
    return "-" if when is None else when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _fmt_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as an aligned text table."""
    header = ("TARGET", "STATUS", "ITER", "DECISION", "BEST", "LAST", "COST/CAP", "NEXT RUN",
              "WHY")  # fmt: skip
    lines = [header]
    for r in rows:
        done, cap = r.get("iterations_completed"), r.get("max_iterations")
        iteration = f"{done}/{cap}" if done is not None else "-"
        if r.get("running_iteration"):
            elapsed = r.get("running_for_s")
            took = f" {_fmt_duration(elapsed)}" if isinstance(elapsed, int | float) else ""
            iteration += f" (#{r['running_iteration']} running{took})"
        status = str(r.get("status") or "-")
        if r.get("paused") and status != TargetStatus.PAUSED:
            status += ",paused"
        if r.get("host"):  # cluster mode: the host running it
            status += f"@{r['host']}"
        est = bool(r.get("estimated"))
        why = r.get("reason") or (f"last error: {r['last_error']}" if r.get("last_error") else None)
        lines.append(
            (
                str(r["target"]),
                status,
                iteration,
                str(r.get("last_decision") or "-"),
                _fmt_score(r.get("best_weighted_score")),
                _fmt_score(r.get("last_weighted_score")),
                f"{_fmt_money(r.get('total_cost_usd'), est)}/{_fmt_money(r.get('max_cost_usd'))}",
                _fmt_local(r.get("next_run_at")),
                str(why or "-"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    errors = [f"{r['target']}: {r['error']}" for r in rows if r.get("error")]
    return "\n".join(out + errors)


def render_summary(report: dict[str, Any]) -> str:
    """The daemon line and the budget line printed under the table."""
    d, b = report["daemon"], report["budget"]
    if d["source"] == "socket":
        up = _fmt_duration(d["uptime_s"] or 0.0)
        state = "shutting down" if d.get("shutting_down") else "running"
        daemon = f"daemon: {state}, pid {d['pid']}, up {up}"
    elif d["running"]:
        daemon = f"daemon: running, pid {d['pid']} ({d['note']})"
    else:
        daemon = f"daemon: not running ({d['note']})"
    money = f"budget: {_fmt_money(b['spent_usd'])} spent"
    if b.get("cap_usd") is not None:
        money += f" of {_fmt_money(b['cap_usd'])}, {_fmt_money(b['remaining_usd'])} left"
    if b.get("reserved_usd"):
        money += f", {_fmt_money(b['reserved_usd'])} reserved by running iterations"
    if b.get("window") is not None and b.get("window_cap_usd") is not None:
        money += (
            f"\nwindow: {b['window']}, {_fmt_money(b['window_spent_usd'] or 0.0)} of "
            f"{_fmt_money(b['window_cap_usd'])} spent, next window at {b['window_resets_at']}"
        )
    cluster = report.get("cluster")
    if cluster:
        hosts = ", ".join(
            f"{h['host']} {'live' if h['live'] else 'stopped' if h['stopped'] else 'silent'}"
            f" ({h['leases']} leases, seen {h['seen_at']})"
            for h in cluster["hosts"]
        )
        fresh = "" if cluster["leases_fresh"] else " (its leases are stale: self-fenced)"
        return f"{daemon}\n{money}\ncluster: this host {cluster['host']}{fresh}; hosts: {hosts}"
    return f"{daemon}\n{money}"


# ------------------------------------------------------------------ the command


def collect(
    roots: dict[str, Path], sock: Path | None, lock_dirs: Sequence[Path], cap: float | None
) -> dict[str, Any]:
    """The status report: from the daemon's socket when it answers, else from the files."""
    why = "no control socket configured"
    if sock is not None:
        try:
            code, payload = request(sock, "GET", "/api/status", timeout=SOCKET_TIMEOUT_S)
        except NotRunningError as exc:
            why = str(exc)
        except PermissionError as exc:
            why = f"permission denied on {sock} ({exc.strerror})"
        else:
            if code == 200 and isinstance(payload, dict):
                daemon = {**payload["daemon"], "source": "socket", "control_socket": str(sock)}
                return {
                    "daemon": daemon,
                    "budget": payload["budget"],
                    "targets": _daemon_rows(payload, roots),
                    **({"cluster": payload["cluster"]} if "cluster" in payload else {}),
                }
            why = f"the control socket answered {code}"
    rows = [target_row(name, root) for name, root in sorted(roots.items())]  # as the daemon
    pid = next((p for p in map(lock_holder, lock_dirs) if p is not None), None)
    note = f"last known state from the files; {why}"
    return {"daemon": _not_running(pid, note), "budget": _file_budget(rows, cap), "targets": rows}


def _from_daemon(sock: Path) -> dict[str, Any] | None:
    """`collect`'s report when the daemon on `sock` answers, else None."""
    try:
        code, payload = request(sock, "GET", "/api/status", timeout=SOCKET_TIMEOUT_S)
    except (NotRunningError, PermissionError):
        return None
    if code != 200 or not isinstance(payload, dict):
        return None
    daemon = {**payload["daemon"], "source": "socket", "control_socket": str(sock)}
    report = {"daemon": daemon, "budget": payload["budget"], "targets": _daemon_rows(payload, {})}
    if "cluster" in payload:
        report["cluster"] = payload["cluster"]
    return report


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
    args = p.parse_args(list(argv))
    report = None
    if args.config is not None:
        sock = args.socket or quick_socket(args.config, os.environ)
        report = None if sock is None else _from_daemon(sock)
    if report is not None:
        pass  # the daemon answered: the targets' tables need not be read
    elif args.config is not None:
        cfg = load_config(args.config)  # a ConfigError is reported by cli/main.py (78)
        roots = {t.name: t.state_root for t in cfg.targets}
        sock = args.socket or socket_path(cfg)
        lock_dirs = [cfg.daemon.state_dir, *roots.values()]
        lifetime = cfg.budget.lifetime_cap_usd
        cap: float | None = lifetime if math.isfinite(lifetime) else None
        report = collect(roots, sock, lock_dirs, cap)
    else:
        roots = {root.resolve().name: root.resolve() for root in args.state_root}
        report = collect(roots, args.socket, list(roots.values()), None)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_table(report["targets"]))
        print()
        print(render_summary(report))
    if any(r.get("status") == "unreadable" for r in report["targets"]):
        return EXIT_TARGET_ERROR
    return EXIT_OK if report["daemon"]["running"] else EXIT_NOT_RUNNING


__all__ = ["collect", "lock_holder", "main", "render_table", "target_row"]
