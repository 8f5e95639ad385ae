"""Start-up and shutdown of a daemon with 1,000 targets.

Start: time from spawning `autoloopd --config` to its READY=1 datagram (we bind an AF_UNIX
SOCK_DGRAM socket and pass it as NOTIFY_SOCKET), with a fresh state directory (every state
root is created) and on a warm restart (every state root exists, with its state and log).
Goal <= 2 s.

Stop: time from SIGTERM to exit while every target is cooling down (`autoloopd status
--json` says so: every state file has status `cooldown`) and the daemon is quiet (under
25 ms of CPU in 0.5 s: its targets' tasks may still be starting when status says all cool
down), with every state checkpointed;
afterwards every state file must parse, hold status `stopped_signal` (or `cooldown`) with
nothing in flight, and agree with its log. Goal <= 1 s.

The targets use the built-in simulator (dry_run, simulated_seconds = 0) and a 600 min
cooldown, so each runs one iteration after the fresh start and then waits. Each cycle
(fresh start, stop, warm start, stop) runs 3 times (`--quick`: once); medians reported.

Floor, measured after each cycle in the same run: writing as many small files as there are
targets (each the size of a state file, each in a directory of its own) and making them
durable with one syncfs. Issue 14 measures with `--targets 10000 --runs 1`.

    .venv/bin/python bench/startstop.py [--quick] [--targets N] [--runs N]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common  # first: puts the repository on sys.path

from tests.helpers.audit import audit_state_roots
from tests.helpers.daemon import Daemon
from tests.helpers.logs import epoch_s
from tests.helpers.notify import NotifyListener
from tests.helpers.process import kill, proc_status_kb

GOAL_START_S = 2.0
GOAL_STOP_S = 1.0


def sync_floor(work: Path, n: int, size: int) -> float:
    """The floor of start and stop: seconds to write `n` files of `size` bytes, one in each
    of `n` directories made beforehand (as the state files), and make them durable with ONE
    syncfs; the directories are removed afterwards."""
    import ctypes
    import ctypes.util
    import os
    import shutil

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    base = work / "floor"
    dirs = [base / f"d{i:05d}" for i in range(n)]
    for d in dirs:
        d.mkdir(parents=True)
    payload = b"x" * (size - 1) + b"\n"
    t0 = time.perf_counter()
    for d in dirs:
        fd = os.open(d / "state.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    shutil.rmtree(base)
    return elapsed


def one_cycle(
    work: Path,
    config: Path,
    n: int,
    kind: str,
    while_cooling: Callable[[Daemon], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Start (fresh or warm), wait until all cool down, SIGTERM, audit the state roots.

    `while_cooling`, when given, is called with the daemon once every target is cooling
    down, before the SIGTERM; what it returns is added to the cycle's figures."""
    with NotifyListener(work) as notify:
        t0, spawn_wall = time.monotonic(), time.time()
        daemon = Daemon(config, work / f"daemon-{kind}.out", env=notify.env, cwd=work)
        try:
            ready = notify.wait_ready(timeout=300)
            if kind == "fresh":  # each target runs its one iteration, then cools down
                daemon.wait_event("iteration_finished", count=n, timeout=600, interval=0.1)
            cooled_at = common.wait_all_status(daemon, "cooldown", n, timeout_s=600)
            quiet_s = common.wait_quiet(daemon.pid)  # nothing in flight, nothing starting
            extra = while_cooling(daemon) if while_cooling is not None else {}
            rss_mb = proc_status_kb(daemon.pid).get("VmHWM", 0) / 1024
            term_wall = time.time()
            stop_s, code = common.stop_daemon(daemon.proc, timeout_s=120)
            exit_wall = time.time()
        finally:
            kill(daemon.proc)
    roots = [r for r in sorted((work / "state").iterdir()) if r.is_dir()]
    audit = audit_state_roots(roots, allowed_status={"stopped_signal", "cooldown"})
    ok = not audit.problems and audit.targets == n
    phases = _phases(daemon.events(), spawn_wall, ready.wall, term_wall, exit_wall)
    return {
        "phases_s": phases,
        "kind": kind,
        "start_to_ready_s": ready.at - t0,
        "ready_to_all_cooling_s": cooled_at - ready.at,
        "cooling_to_quiet_s": quiet_s,
        "sigterm_to_exit_s": stop_s,
        "exit_code": code,
        "peak_rss_mb": rss_mb,
        "states_ok": ok,
        "audit": audit.as_dict(),
        **extra,
    }


def _phases(
    events: list[dict[str, Any]], spawn: float, ready: float, term: float, exit_: float
) -> dict[str, float | None]:
    """Split start-up and shutdown by the daemon's own log events (wall clock)."""

    def first(name: str, after: float = 0.0) -> float | None:
        for e in events:
            if e.get("event") == name and "timestamp" in e:
                at = epoch_s(e["timestamp"])
                if at >= after - 0.05:
                    return at
        return None

    def last(name: str) -> float | None:
        stamps = [epoch_s(e["timestamp"]) for e in events if e.get("event") == name]
        return max(stamps) if stamps else None

    def span(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(b - a, 4)

    starting = first("daemon_starting")
    daemon_ready = first("daemon_ready")
    shutdown = first("shutdown_requested", term)
    stopped_last = last("target_stopped")
    stopped = first("daemon_stopped", term)
    return {
        "spawn_to_daemon_starting (interpreter, imports, config)": span(spawn, starting),
        "daemon_starting_to_daemon_ready (prepare every target)": span(starting, daemon_ready),
        "daemon_ready_to_READY_received": span(daemon_ready, ready),
        "sigterm_to_shutdown_requested": span(term, shutdown),
        "shutdown_requested_to_last_target_stopped (final checkpoints)": span(
            shutdown, stopped_last
        ),
        "last_target_stopped_to_daemon_stopped": span(stopped_last, stopped),
        "daemon_stopped_to_exit (teardown)": span(stopped, exit_),
    }


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--targets", type=int, default=1000)
    p.add_argument("--runs", type=int, default=None, help="default 3 (quick 1)")
    args = p.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    n = args.targets
    common.raise_nofile_limit(n + 4096)
    cycles: list[dict[str, Any]] = []
    with common.work_dir("startstop", args.keep) as base:
        info = common.machine(base)
        common.print_machine(info)
        for run in range(runs):
            work = base / f"run{run + 1}"
            work.mkdir()
            config = common.idle_config(work, n)
            for kind in ("fresh", "warm"):
                c = one_cycle(work, config, n, kind)
                state_size = (work / "state" / "t00000" / "autoloop_state.json").stat().st_size
                c["floor_s"] = sync_floor(work, n, state_size)
                c["run"] = run + 1
                cycles.append(c)
                print(
                    f"  run {run + 1} {kind}: start->READY {c['start_to_ready_s']:.2f} s, "
                    f"SIGTERM->exit {common.rnd(c['sigterm_to_exit_s'], 2)} s, "
                    f"floor {c['floor_s']:.2f} s, states {'ok' if c['states_ok'] else 'NOT OK'}",
                    flush=True,
                )

    def med(kind: str | None, key: str) -> float | None:
        values = [
            c[key] for c in cycles if (kind is None or c["kind"] == kind) and c[key] is not None
        ]
        return statistics.median(values) if values else None

    summary = {
        "start_fresh_median_s": med("fresh", "start_to_ready_s"),
        "start_warm_median_s": med("warm", "start_to_ready_s"),
        "stop_median_s": med(None, "sigterm_to_exit_s"),
        "stop_after_fresh_median_s": med("fresh", "sigterm_to_exit_s"),
        "stop_after_warm_median_s": med("warm", "sigterm_to_exit_s"),
        "all_states_ok": all(c["states_ok"] for c in cycles),
        "floor_median_s": med(None, "floor_s"),
    }
    results = {
        "machine": info,
        "quick": args.quick,
        "targets": n,
        "runs": runs,
        "summary": summary,
        "cycles": cycles,
        "goal_start_s": GOAL_START_S,
        "goal_stop_s": GOAL_STOP_S,
    }
    floor = summary["floor_median_s"]

    def ratio(value: float | None) -> str:
        return "" if value is None or not floor else f"{value / floor:.1f}x"

    rows = [
        ["start -> READY=1, fresh state dir", common.rnd(summary["start_fresh_median_s"], 2),
         ratio(summary["start_fresh_median_s"]),
         common.goal(summary["start_fresh_median_s"], GOAL_START_S) + f" (<= {GOAL_START_S:g})"],
        ["start -> READY=1, warm restart", common.rnd(summary["start_warm_median_s"], 2),
         ratio(summary["start_warm_median_s"]),
         common.goal(summary["start_warm_median_s"], GOAL_START_S) + f" (<= {GOAL_START_S:g})"],
        ["SIGTERM -> exit, all cooling down", common.rnd(summary["stop_median_s"], 2),
         ratio(summary["stop_median_s"]),
         common.goal(summary["stop_median_s"], GOAL_STOP_S) + f" (<= {GOAL_STOP_S:g})"],
        [f"floor: {n} small files written, one syncfs", common.rnd(floor, 3), "1.0x", ""],
        ["every state parses, stopped, agrees with log",
         "yes" if summary["all_states_ok"] else "NO", "", ""],
    ]  # fmt: skip
    print()
    print(f"{n} targets, {runs} run(s), medians:")
    print(common.table(["figure", "seconds", "ratio to floor", "goal"], rows))
    phase_rows = []
    for key in cycles[0]["phases_s"]:
        for kind in ("fresh", "warm"):
            values = [
                c["phases_s"][key]
                for c in cycles
                if c["kind"] == kind and c["phases_s"][key] is not None
            ]
            phase_rows.append([key, kind, common.rnd(median_or_none(values), 3)])
    print()
    print(common.table(["phase (from the daemon's log events)", "cycle", "median s"], phase_rows))
    print(f"results: {common.write_results('startstop', results)}")


def median_or_none(values: list[float]) -> float | None:
    """The median, None for no values."""
    return statistics.median(values) if values else None


if __name__ == "__main__":
    main()
