"""The chaos figures of cluster mode: three real hosts on one PostgreSQL database, one of them
crashed (kill -9 with its orchestrators), its daemon killed alone (kill -9 of the daemon
only, the OOM killer's case: `runs_died_after_s` is the kill to its death watch having
killed every process of its runs, overlaps must stay 0), frozen past its lease (SIGSTOP,
then SIGCONT; also frozen inside a transaction that holds the budget row's lock), or the
database restarted under them (a private server, stopped and started on the same port).

Each scenario is the one the tests play (tests/helpers/chaos.py: 6 targets x 6 iterations,
lease 3 s, renewals every 0.5 s, termination grace 0.5 s), `--runs` times. Reported per
scenario: how long the lost host's leases took to move (from the event to the database
showing another holder, polled every 50 ms) and to the first run of its targets elsewhere;
the longest time two runs of one target ran at once against the margin the timers allow;
spent against the sum of every charge (exact decimals); fenced late writes (reservations
settled late with the run's real cost); iterations that had to be run again; and every
invariant that failed (tests/helpers/chaos_checks.py). Prints a summary, then the JSON.

    AUTOLOOPD_TEST_DSN=postgresql://... .venv/bin/python bench/chaos.py [--quick] [--runs N]
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
from typing import Any

import common  # first: puts the repository on sys.path

from tests.helpers.chaos import SCENARIOS, ChaosLab, play
from tests.helpers.chaos_checks import Figures, check
from tests.helpers.cluster import DSN_VAR, fresh_database
from tests.helpers.private_pg import postgres_available, private_postgres


def _play_once(scenario: str, keep: bool) -> Figures:
    try:
        return _play(scenario, keep)
    except AssertionError as exc:  # a wait that timed out: the scenario's own failure
        return Figures(scenario, None, problems=[str(exc)])


def _play(scenario: str, keep: bool) -> Figures:
    with common.work_dir(f"chaos-{scenario}", keep) as work:
        if scenario == "db_restart":
            with private_postgres() as server:
                lab = ChaosLab(work, server.dsn)
                try:
                    return check(lab, play(lab, scenario, server))
                finally:
                    lab.stop_all()
        with contextlib.contextmanager(fresh_database)() as dsn:
            lab = ChaosLab(work, dsn, iterations=12 if scenario == "freeze_in_transaction" else 6)
            try:
                return check(lab, play(lab, scenario))
            finally:
                lab.stop_all()


def _summary(scenario: str, runs: list[Figures]) -> dict[str, Any]:
    def values(name: str) -> list[Any]:
        return [getattr(f, name) for f in runs if getattr(f, name) is not None]

    def top(name: str) -> Any:
        found = values(name)
        return max(found) if found else None

    takeovers = values("takeover_s")
    return {
        "runs": len(runs),
        "takeover_s_median": round(statistics.median(takeovers), 3) if takeovers else None,
        "takeover_s_max": top("takeover_s"),
        "first_rerun_s_max": top("first_rerun_s"),
        "outage_s_max": top("outage_s"),
        "runs_died_after_s": values("runs_died_after_s"),
        "max_overlap_s": top("max_overlap_s"),
        "margin_s": runs[0].margin_s,
        "spent_equals_sum_of_charges": all(f.spent_usd == f.sum_of_charges_usd for f in runs),
        "spent_usd": [f.spent_usd for f in runs],
        "sum_of_charges_usd": [f.sum_of_charges_usd for f in runs],
        "fenced_late_writes": sum(values("fenced_late_writes")),
        "expired_reservations": sum(values("expired")),
        "iterations_rerun": sum(values("reruns")),
        "self_fences": sum(values("self_fences_logged")),
        "pushes_deferred": sum(values("pushes_deferred_logged")),
        "problems": [p for f in runs for p in f.problems],
    }


def _line(scenario: str, s: dict[str, Any]) -> str:
    money = "exact" if s["spent_equals_sum_of_charges"] else "OFF"
    moved = (
        f"leases moved {s['takeover_s_median']} s (max {s['takeover_s_max']}) after the event, "
        f"first rerun elsewhere by {s['first_rerun_s_max']} s"
        + (f", runs dead after {s['runs_died_after_s']} s" if s["runs_died_after_s"] else "")
        if scenario != "db_restart"
        else f"database down {s['outage_s_max']} s, {s['self_fences']} self-fences, "
        f"{s['pushes_deferred']} pushes deferred"
    )
    return (
        f"{scenario} x{s['runs']}: {moved}; overlap {s['max_overlap_s']} s "
        f"(margin {s['margin_s']} s); spent = sum of charges: {money} "
        f"({s['spent_usd'][-1]} $ in the last run); fenced late writes {s['fenced_late_writes']}, "
        f"expired {s['expired_reservations']}, iterations re-run {s['iterations_rerun']}; "
        f"problems {len(s['problems'])}"
    )


def main() -> int:
    """Play the scenarios; print the summary and the JSON, write bench/results/chaos.json."""
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="plays of each scenario (quick: 1)")
    p.add_argument("--only", choices=SCENARIOS, action="append", help="these scenarios only")
    args = p.parse_args()
    if not os.environ.get(DSN_VAR):
        print(f"set {DSN_VAR} to a PostgreSQL server (.ci/postgres start DIR)")
        return 2
    scenarios = list(args.only or SCENARIOS)
    if "db_restart" in scenarios and (why := postgres_available()):
        print(f"db_restart skipped: {why}")
        scenarios.remove("db_restart")
    runs = 1 if args.quick else args.runs
    info = common.machine()
    common.print_machine(info)
    figures = {s: [_play_once(s, args.keep) for _ in range(runs)] for s in scenarios}
    summaries = {s: _summary(s, f) for s, f in figures.items()}
    for scenario, summary in summaries.items():
        print(_line(scenario, summary))
        for problem in summary["problems"]:
            print(f"  PROBLEM: {problem}")
    results = {
        "quick": args.quick,
        "machine": info,
        "summary": summaries,
        "runs": {s: [f.as_json() for f in fs] for s, fs in figures.items()},
    }
    print(json.dumps({"summary": summaries}, indent=2))
    print(f"results: {common.write_results('chaos', results)}")
    return 1 if any(s["problems"] for s in summaries.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
