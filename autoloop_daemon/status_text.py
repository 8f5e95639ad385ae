"""The rows of `autoloopd status` and how they print: the keys, the table, the summary.

One row per target whatever its source (the daemon's answer or the state files): the
target's row (target_row.py) seen through `status_row`; the JSON form is `json_text.py`.
The whole text (`render_text`) is made in the daemon for `GET /api/status/report` and in
the client from the files, by the same code. By default it lists only the rows with
something to tell: a target waiting for its next turn with nothing wrong (`is_quiet`) is
counted under the table, not listed; `status --all` lists every row.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import timedelta, timezone, tzinfo
from typing import Any

from autoloop_daemon.clock import parse_iso
from autoloop_daemon.vocab import Phase, TargetStatus
from autoloop_daemon.zone_key import is_zone_key

ROW_KEYS = (
    "target", "status", "paused", "reason", "last_error", "iterations_completed",
    "max_iterations", "running_iteration", "running_for_s", "in_flight",
    "best_weighted_score", "last_weighted_score", "last_decision", "total_cost_usd",
    "max_cost_usd", "estimated", "next_run_at", "consecutive_errors", "state_root", "host",
)  # fmt: skip


def make_row(**values: Any) -> dict[str, Any]:
    """A status row: every key of ROW_KEYS (None unless given), then `values`."""
    row = dict.fromkeys(ROW_KEYS)
    row.update(values)
    return row


def status_row(target_row: Mapping[str, Any], state_root: str) -> dict[str, Any]:
    """The status row of a target's row (target_row.py, from the daemon or the files):
    ROW_KEYS' values, `in_flight` the running iteration, and `state_root`."""
    row = {k: target_row.get(k) for k in ROW_KEYS}  # make_row's, at 10,000 rows a second
    row["in_flight"] = target_row.get("running_iteration")
    row["state_root"] = state_root
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


def _fmt_money(value: Any, estimated: bool = False) -> str:
    number = _finite(value)
    return "-" if number is None else f"{'~' if estimated else ''}${number:.2f}"


def zone_of(key: str | None, offset_s: int | None) -> tzinfo | None:
    """The zone a client asked the text's times in: its IANA zone `key` when this machine
    knows it (with its daylight-saving rules), else its offset from UTC now, else None
    (this process's own zone). Reads the zone's file: call it from a worker thread."""
    if key is not None and is_zone_key(key):
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # only where a key is asked

        try:
            return ZoneInfo(key)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass  # another machine's name, or a POSIX TZ string: the offset is sent too
    return None if offset_s is None else timezone(timedelta(seconds=offset_s))


def _fmt_local(iso: Any, zone: tzinfo | None) -> str:
    when = parse_iso(iso) if isinstance(iso, str) else None
    return "-" if when is None else when.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def render_table(rows: Sequence[dict[str, Any]], zone: tzinfo | None = None) -> str:
    """The rows as an aligned text table, times in `zone` (None: this process's own)."""
    header = ("TARGET", "STATUS", "ITER", "DECISION", "BEST", "LAST", "COST/CAP", "NEXT RUN",
              "WHY")  # fmt: skip
    lines = [header]
    for r in rows:
        done, cap = r.get("iterations_completed"), r.get("max_iterations")
        iteration = "-" if done is None else f"{done}" if cap is None else f"{done}/{cap}"
        if r.get("running_iteration"):
            elapsed = r.get("running_for_s")
            took = f" {_fmt_duration(elapsed)}" if isinstance(elapsed, int | float) else ""
            doing = "interrupted" if r.get("status") == "interrupted" else "running"
            iteration += f" (#{r['running_iteration']} {doing}{took})"
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
                "-" if _stopped(r.get("status")) else _fmt_local(r.get("next_run_at"), zone),
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


def render_daemon(d: dict[str, Any]) -> str:
    """The daemon line: running (pid, uptime) or not (and what the files say of it)."""
    if d["source"] == "socket":
        up = _fmt_duration(d["uptime_s"] or 0.0)
        state = "shutting down" if d.get("shutting_down") else "running"
        return f"daemon: {state}, pid {d['pid']}, up {up}"
    if d["running"]:
        return f"daemon: running, pid {d['pid']} ({d['note']})"
    return f"daemon: not running ({d['note']})"


def render_summary(report: dict[str, Any], *, daemon: bool = True) -> str:
    """The daemon line (unless `daemon` is False: printed above the table) and the budget
    line printed under the table."""
    b = report["budget"]
    lines = [render_daemon(report["daemon"])] if daemon else []
    money = f"budget: {_fmt_money(b['spent_usd'])} spent"
    if b.get("unknown"):  # cluster mode, its database away: the local total is not it
        money = f"budget: {b['unknown']}"
    if b.get("cap_usd") is not None:
        money += f" of {_fmt_money(b['cap_usd'])}, {_fmt_money(b['remaining_usd'])} left"
    if b.get("reserved_usd"):
        money += f", {_fmt_money(b['reserved_usd'])} reserved by running iterations"
    loading = sum(1 for t in report.get("targets", ()) if t.get("status") == Phase.LOADING)
    if loading:  # start-up: the budget holds only what the loaded targets' logs spent
        plural = "s" if loading != 1 else ""
        money += f"\n{loading:,} target{plural} still loading: not counted in the budget yet"
    if b.get("window") is not None and b.get("window_cap_usd") is not None:
        money += (
            f"\nwindow: {b['window']}, {_fmt_money(b['window_spent_usd'] or 0.0)} of "
            f"{_fmt_money(b['window_cap_usd'])} spent, next window at {b['window_resets_at']}"
        )
    if b.get("hard_runs_at_once") is not None:  # guarantee = "hard" shrinks concurrency
        money += (
            f"\nhard cap: each run reserves its worst case {_fmt_money(b['hard_worst_case_usd'])}"
            f", so at most {b['hard_runs_at_once']} can run at once on what is left"
        )
    cluster = report.get("cluster")
    if cluster:
        hosts = ", ".join(
            f"{h['host']} {'live' if h['live'] else 'stopped' if h['stopped'] else 'silent'}"
            f" ({h['leases']} leases, seen {h['seen_at']})"
            for h in cluster["hosts"]
        )
        fresh = "" if cluster["leases_fresh"] else " (its leases are stale: self-fenced)"
        return "\n".join(
            [*lines, money, f"cluster: this host {cluster['host']}{fresh}; hosts: {hosts}"]
        )
    return "\n".join([*lines, money])


QUIET_STATUSES = frozenset({
    TargetStatus.IDLE, TargetStatus.COOLDOWN, TargetStatus.WAITING, Phase.LOADING,
})  # fmt: skip
"""Statuses of a target between its turns (or still loading at start-up)."""


def is_quiet(row: Mapping[str, Any], *, starting: bool = False) -> bool:
    """True when `row` has nothing to tell beyond its status: between turns, not paused, not
    running, no error since its last success and no review waiting or unreadable. While the
    daemon is `starting` (its targets still loading), a target the last shutdown stopped is
    quiet too: it resumes once every target is in."""
    status = row.get("status")
    return (
        (status in QUIET_STATUSES or (starting and status == TargetStatus.STOPPED_SIGNAL))
        and not row.get("paused")
        and not row.get("running_iteration")
        and not row.get("consecutive_errors")
        and not row.get("pending_reviews")
        and not row.get("review_problem")
        and not row.get("error")
    )


def render_text(
    report: dict[str, Any], *, every_row: bool = False, zone: tzinfo | None = None
) -> str:
    """What `autoloopd status` prints: the daemon's absence first, the table (the rows that
    are not quiet, or `every_row`; times in `zone`, None: this process's own), the count of
    the rows left out, then the summary."""
    absent = not report["daemon"]["running"]
    lines = [render_daemon(report["daemon"])] if absent else []
    rows = report["targets"]
    starting = report["daemon"].get("ready") is False and not absent
    shown: list[dict[str, Any]] = []
    quiet: list[dict[str, Any]] = []
    for r in rows:
        (quiet if not every_row and is_quiet(r, starting=starting) else shown).append(r)
    if shown or not rows:
        lines.append(render_table(shown, zone))
    if quiet:
        lines.append(_left_out(quiet))
    lines += ["", render_summary(report, daemon=not absent)]
    if (line := review_line(report)) is not None:
        lines.append(line)
    return "\n".join(lines)


def _left_out(quiet: Sequence[Mapping[str, Any]]) -> str:
    """ "9,990 targets between turns with nothing to tell, not listed (cooldown 9,980, ...)"
    for the `quiet` rows."""
    counts = Counter(str(r["status"]) for r in quiet)
    each = ", ".join(f"{status} {n:,}" for status, n in sorted(counts.items()))
    noun = "target" if len(quiet) == 1 else "targets"
    return (
        f"{len(quiet):,} {noun} between turns with nothing to tell, not listed ({each}); "
        "`autoloopd status --all` lists every target"
    )


def review_line(report: Mapping[str, Any]) -> str | None:
    """ "3 candidates awaiting review (a: 2, b: 1)", or None when none awaits."""
    total = report.get("reviews_pending") or 0
    if not total:
        return None
    per = ", ".join(
        f"{r['target']}: {r['pending_reviews']}"
        for r in report["targets"]
        if r.get("pending_reviews")
    )
    noun = "candidate" if total == 1 else "candidates"
    return f"reviews: {total} {noun} awaiting review ({per}); see `autoloopd review list`"


def _stopped(status: object) -> bool:
    """True for a status after which no run is due (a stop, or the circuit breaker)."""
    return isinstance(status, str) and (status.startswith("stopped_") or status == "error")
