"""Many targets in one daemon: throughput, peak memory, CPU, and nothing lost or double-counted.

Part A, busy: 1,000 targets in continuous mode with a 1 s cooldown, the trivial orchestrator
(`/bin/echo <result JSON>`), max_concurrent_iterations = 32, run for 60 s (`--quick`: 15 s),
then SIGTERM. Figures: iterations per second between READY=1 and SIGTERM, peak RSS of the
daemon (VmHWM from /proc/<pid>/status, children excluded; goal <= 150 MB), the daemon's own
CPU (utime + stime from /proc/<pid>/stat) as % of one core, and the invariants after exit:
every log numbers its iterations 1..n, total_cost_usd == sum of logged costs,
iterations_completed == completed lines, nothing left in flight, and the number of log
lines equals the number of `iteration_finished` events the daemon logged.

Part B, idle: 10,000 targets (`--quick`: 2,000) with dry_run = true, continuous, 600 min
cooldown, simulated_seconds = 0: each runs one simulated iteration, then cools down. Once
all have logged `iteration_finished` and `autoloopd status --json` says every target is
cooling down: peak RSS (goal <= 500 MB) and idle CPU over 20 s
(`--quick`: 5 s; goal < 2 % of one core).

    .venv/bin/python bench/scale.py [--quick] [--only busy|idle] [--busy-targets N]
                                    [--idle-targets N] [--seconds S]
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import common  # first: puts the repository on sys.path

from tests.helpers.audit import audit_state_roots
from tests.helpers.config import write_config
from tests.helpers.daemon import Daemon
from tests.helpers.logs import epoch_s
from tests.helpers.notify import Notification, NotifyListener
from tests.helpers.process import kill, proc_status_kb

GOAL_BUSY_RSS_MB = 150.0
GOAL_IDLE_RSS_MB = 500.0
GOAL_IDLE_CPU_PCT = 2.0
SAMPLE_S = 0.5


class Started(NamedTuple):
    """A started daemon: its sampler, when it was spawned (monotonic), its READY=1 (sent
    once the config is in, before the targets' states load) and the READY=1 it sends again
    once every target is loaded (`loaded`: no run starts before it)."""

    daemon: Daemon
    sampler: Sampler
    t0: float
    ready: Notification
    loaded: Notification


class Sampler:
    """Periodic readings of the daemon's /proc entries."""

    def __init__(self, pid: int, t0: float) -> None:
        self.pid = pid
        self.t0 = t0
        self.rows: list[dict[str, Any]] = []

    def sample(self, finished: int | None = None) -> dict[str, Any] | None:
        """One reading; `finished`: the iterations the daemon has logged as finished so far."""
        mem = proc_status_kb(self.pid)
        cpu = common.proc_cpu_detail_s(self.pid)
        if not mem or not cpu:
            return None
        busy_s, total_s = common.system_cpu_s()
        row = {
            "t": round(time.monotonic() - self.t0, 3),
            "rss_mb": round(mem.get("VmRSS", 0) / 1024, 2),
            "hwm_mb": round(mem.get("VmHWM", 0) / 1024, 2),
            "cpu_s": cpu["utime"] + cpu["stime"],
            "utime_s": cpu["utime"],
            "stime_s": cpu["stime"],
            "children_cpu_s": cpu["cutime"] + cpu["cstime"],
            "machine_busy_s": busy_s,
            "machine_total_s": total_s,
            "threads": common.proc_threads(self.pid),
            "fds": common.proc_fds(self.pid),
            "iterations_finished": finished,
        }
        self.rows.append(row)
        return row

    @staticmethod
    def cpu_split(first: dict[str, Any], last: dict[str, Any], window: float) -> dict[str, Any]:
        """CPU between two samples: the daemon (user, system), its children, the machine."""

        def pct(key: str) -> float | None:
            return 100 * (last[key] - first[key]) / window if window > 0 else None

        machine_total = last["machine_total_s"] - first["machine_total_s"]
        machine_busy = last["machine_busy_s"] - first["machine_busy_s"]
        return {
            "daemon_user_pct_of_one_core": pct("utime_s"),
            "daemon_system_pct_of_one_core": pct("stime_s"),
            "children_pct_of_one_core": pct("children_cpu_s"),
            "machine_busy_pct_of_all_cores": (
                100 * machine_busy / machine_total if machine_total > 0 else None
            ),
        }

    def peak_mb(self) -> float | None:
        return max((r["hwm_mb"] for r in self.rows), default=None)

    def max_of(self, key: str) -> Any:
        return max((r[key] for r in self.rows if r[key] is not None), default=None)


def _loaded(message: Notification) -> bool:
    status = message.get("STATUS") or ""
    return message.get("READY") == "1" and " loading" not in status


@contextlib.contextmanager
def running(work: Path, config: Path, ready_timeout_s: float) -> Iterator[Started]:
    """The daemon started with our notify socket, once every target is loaded (its second
    READY=1, whose STATUS= has no `loading`); killed at the end (by its own pid) if it still
    runs."""
    with NotifyListener(work) as notify:
        t0 = time.monotonic()
        daemon = Daemon(config, work / "daemon.out", env=notify.env, cwd=work)
        try:
            ready = notify.wait_ready(timeout=ready_timeout_s)
            loaded = notify.wait_for(
                lambda ms: next((m for m in ms if _loaded(m)), None),
                timeout=ready_timeout_s,
                what="READY=1 with every target loaded",
            )
            yield Started(daemon, Sampler(daemon.pid, t0), t0, ready, loaded)
        finally:
            kill(daemon.proc)


def fleet_config(work: Path, n: int, defaults: dict[str, Any]) -> Path:
    targets = common.make_targets(work, n)
    return write_config(
        work / "config.toml",
        daemon=common.daemon_table(work),
        budget={"max_cost_usd": 100_000_000.0, "cost_per_minute_usd": 0.10},
        defaults=defaults,
        targets=targets,
    )


def busy_defaults() -> dict[str, Any]:
    """`[defaults]` of the busy part: `/bin/echo <result JSON>`, 1 s cooldown, no limit."""
    return {
        "mode": "continuous",
        "max_iterations": common.NO_LIMIT_ITERATIONS,
        "max_cost_usd": common.NO_LIMIT_USD,
        "plateau_window": common.NO_LIMIT_ITERATIONS,
        "oscillation_window": 0,
        "cooldown_minutes": 1 / 60,
        "orchestrator": common.as_template(common.echo_argv()),
        "handoff_arg": "",
        "estimated_cost_usd": 0.0001,
    }


def busy(work: Path, n: int, seconds: float) -> dict[str, Any]:
    """Part A: n targets iterating for `seconds`, then SIGTERM."""
    print(f"busy: {n} targets, 1 s cooldown, 32 concurrent, {seconds:g} s", flush=True)
    config = fleet_config(work, n, busy_defaults())
    result: dict[str, Any] = {"targets": n, "run_s": seconds}
    with running(work, config, ready_timeout_s=300) as (daemon, sampler, t0, ready, loaded):
        result["start_to_ready_s"] = ready.at - t0
        result["start_to_loaded_s"] = loaded.at - t0
        first = sampler.sample()
        deadline = loaded.at + seconds
        while time.monotonic() < deadline and daemon.proc.poll() is None:
            time.sleep(min(SAMPLE_S, max(0.0, deadline - time.monotonic())))
            sampler.sample(daemon.count("iteration_finished"))
        last = sampler.sample(daemon.count("iteration_finished"))
        term_wall = time.time()
        stop_s, code = common.stop_daemon(daemon.proc, timeout_s=120)
    if first is None or last is None:
        raise RuntimeError(f"the daemon died:\n{common.tail(daemon.out)}")
    window = (last["t"] + t0) - loaded.at
    finished = daemon.events("iteration_finished")
    in_window = [
        e
        for e in finished
        if "timestamp" in e and loaded.wall <= epoch_s(e["timestamp"]) <= term_wall
    ]
    per_second = Counter(int(epoch_s(e["timestamp"]) - loaded.wall) for e in finished)
    roots = sorted((work / "state").iterdir())
    roots = [r for r in roots if r.is_dir()]
    audit = audit_state_roots(roots, allowed_status={"stopped_signal", "cooldown"})
    cpu_s = last["cpu_s"] - first["cpu_s"]
    result.update(
        exit_code=code,
        sigterm_to_exit_s=stop_s,
        window_s=window,
        iterations_in_window=len(in_window),
        iterations_per_s=len(in_window) / window if window > 0 else None,
        iterations_total=len(finished),
        peak_rss_mb=sampler.peak_mb(),
        rss_at_sigterm_mb=last["rss_mb"],
        cpu_pct_of_one_core=100 * cpu_s / window if window > 0 else None,
        cpu_s_in_window=cpu_s,
        cpu_split=Sampler.cpu_split(first, last, window),
        daemon_cpu_ms_per_iteration=1e3 * cpu_s / len(in_window) if in_window else None,
        cpu_s_total_to_sigterm=last["cpu_s"],
        max_threads=sampler.max_of("threads"),
        max_fds=sampler.max_of("fds"),
        log_lines=audit.log_lines,
        iteration_finished_events=len(finished),
        lost_or_double_counted=audit.log_lines - len(finished),
        invariants_ok=not audit.problems and audit.log_lines == len(finished),
        audit=audit.as_dict(),
        iterations_per_second_timeline=[per_second.get(i, 0) for i in range(int(window) + 2)],
        samples=sampler.rows,
        goal_peak_rss_mb=GOAL_BUSY_RSS_MB,
    )
    return result


def idle(work: Path, n: int, idle_s: float) -> dict[str, Any]:
    """Part B: n dry-run targets, one iteration each, then all cooling down for 600 min."""
    print(f"idle: {n} targets, dry run, 600 min cooldown, idle window {idle_s:g} s", flush=True)
    soft, hard = common.raise_nofile_limit(n + 4096)
    config = fleet_config(
        work,
        n,
        common.idle_defaults(),
    )
    result: dict[str, Any] = {"targets": n, "idle_s": idle_s, "nofile_limit": [soft, hard]}
    with running(work, config, ready_timeout_s=600) as (daemon, sampler, t0, ready, _):
        result["start_to_ready_s"] = ready.at - t0
        print(f"  READY after {ready.at - t0:.1f} s", flush=True)
        # Each target logs one iteration_finished, then checkpoints its cooldown.
        deadline = time.monotonic() + 900
        while daemon.count("iteration_finished") < n and daemon.proc.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {daemon.count('iteration_finished')} of {n} ran")
            time.sleep(SAMPLE_S)
            sampler.sample(daemon.count("iteration_finished"))
        cooled_at = common.wait_all_status(daemon, "cooldown", n, timeout_s=300)
        result["ready_to_all_cooling_s"] = cooled_at - ready.at
        print(f"  all cooling down {cooled_at - ready.at:.1f} s after READY", flush=True)
        time.sleep(3.0)  # let the last checkpoints and log lines of the burst settle
        first = sampler.sample(daemon.count("iteration_finished"))
        end = time.monotonic() + idle_s
        while time.monotonic() < end and daemon.proc.poll() is None:
            time.sleep(min(SAMPLE_S, max(0.0, end - time.monotonic())))
            sampler.sample(daemon.count("iteration_finished"))
        last = sampler.sample(daemon.count("iteration_finished"))
        stop_s, code = common.stop_daemon(daemon.proc, timeout_s=300)
    if first is None or last is None:
        raise RuntimeError(f"the daemon died:\n{common.tail(daemon.out)}")
    window = last["t"] - first["t"]
    roots = [r for r in sorted((work / "state").iterdir()) if r.is_dir()]
    audit = audit_state_roots(roots, allowed_status={"stopped_signal", "cooldown"})
    finished = daemon.events("iteration_finished")
    cpu_s = last["cpu_s"] - first["cpu_s"]
    result.update(
        exit_code=code,
        sigterm_to_exit_s=stop_s,
        peak_rss_mb=sampler.peak_mb(),
        rss_idle_mb=last["rss_mb"],
        rss_per_target_kb=last["rss_mb"] * 1024 / n,
        idle_window_s=window,
        idle_cpu_s=cpu_s,
        idle_cpu_pct_of_one_core=100 * cpu_s / window if window > 0 else None,
        idle_cpu_split=Sampler.cpu_split(first, last, window),
        max_threads=sampler.max_of("threads"),
        max_fds=sampler.max_of("fds"),
        log_lines=audit.log_lines,
        iteration_finished_events=len(finished),
        invariants_ok=not audit.problems and audit.log_lines == len(finished),
        audit=audit.as_dict(),
        samples=sampler.rows,
        goal_peak_rss_mb=GOAL_IDLE_RSS_MB,
        goal_idle_cpu_pct=GOAL_IDLE_CPU_PCT,
    )
    return result


def plot(results: dict[str, Any]) -> Path | None:
    """RSS and iterations per second of the busy run (needs matplotlib)."""
    plt = common.pyplot()
    if plt is None or "busy" not in results:
        return None
    b = results["busy"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    ready = b["start_to_ready_s"]
    ts = [r["t"] - ready for r in b["samples"]]
    ax1.plot(ts, [r["rss_mb"] for r in b["samples"]], label="VmRSS")
    ax1.plot(ts, [r["hwm_mb"] for r in b["samples"]], label="VmHWM", linestyle="--")
    ax1.axhline(GOAL_BUSY_RSS_MB, color="red", linewidth=0.8, label="goal")
    ax1.set_ylabel("MB")
    ax1.legend(loc="lower right")
    ax1.set_title(f"autoloopd, {b['targets']} targets, 32 concurrent (t = 0 at READY)")
    rate = b["iterations_per_second_timeline"]
    ax2.bar(range(len(rate)), rate, width=1.0)
    ax2.set_ylabel("iterations / s")
    ax2.set_xlabel("seconds since READY=1")
    return common.save_plot(plt, fig, "scale", results["quick"])


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--only", choices=("busy", "idle"), default=None)
    p.add_argument("--busy-targets", type=int, default=1000)
    p.add_argument("--idle-targets", type=int, default=None, help="default 10000 (quick 2000)")
    p.add_argument("--seconds", type=float, default=None, help="busy run (default 60, quick 15)")
    args = p.parse_args()
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    idle_targets = args.idle_targets or (2000 if args.quick else 10000)
    idle_s = 5.0 if args.quick else 20.0
    results: dict[str, Any] = {"quick": args.quick}
    with common.work_dir("scale", args.keep) as base:
        results["machine"] = common.machine(base)
        common.print_machine(results["machine"])
        if args.only in (None, "busy"):
            (base / "busy").mkdir()
            results["busy"] = busy(base / "busy", args.busy_targets, seconds)
        if args.only in (None, "idle"):
            (base / "idle").mkdir()
            results["idle"] = idle(base / "idle", idle_targets, idle_s)
    rows = []
    if "busy" in results:
        b = results["busy"]
        rows += [
            ["busy", "targets", b["targets"], ""],
            ["busy", "iterations/s (READY..SIGTERM)", f"{b['iterations_per_s']:.1f}", ""],
            ["busy", "peak RSS MB (VmHWM)", f"{b['peak_rss_mb']:.1f}",
             common.goal(b["peak_rss_mb"], GOAL_BUSY_RSS_MB) + f" (<= {GOAL_BUSY_RSS_MB:g})"],
            ["busy", "CPU % of one core (daemon only)", f"{b['cpu_pct_of_one_core']:.1f}", ""],
            ["busy", "  daemon CPU ms per iteration", f"{b['daemon_cpu_ms_per_iteration']:.2f}",
             ""],
            ["busy", "  orchestrators' CPU % of one core",
             common.rnd(b["cpu_split"]["children_pct_of_one_core"], 1), ""],
            ["busy", "  machine busy % (all cores, anyone)",
             common.rnd(b["cpu_split"]["machine_busy_pct_of_all_cores"], 1), ""],
            ["busy", "start to READY s", f"{b['start_to_ready_s']:.2f}", ""],
            ["busy", "SIGTERM to exit s", common.rnd(b["sigterm_to_exit_s"], 2), ""],
            ["busy", "log lines / iteration_finished",
             f"{b['log_lines']} / {b['iteration_finished_events']}", ""],
            ["busy", "per-target iterations min..max",
             f"{b['audit']['per_target_completed_min']}..{b['audit']['per_target_completed_max']}",
             ""],
            ["busy", "invariants", "ok" if b["invariants_ok"] else "VIOLATED",
             f"{b['audit']['problem_count']} problems"],
        ]  # fmt: skip
    if "idle" in results:
        i = results["idle"]
        rows += [
            ["idle", "targets", i["targets"], ""],
            ["idle", "start to READY s", f"{i['start_to_ready_s']:.1f}", ""],
            ["idle", "READY to all cooling down s", f"{i['ready_to_all_cooling_s']:.1f}", ""],
            ["idle", "peak RSS MB (VmHWM)", f"{i['peak_rss_mb']:.1f}",
             common.goal(i["peak_rss_mb"], GOAL_IDLE_RSS_MB) + f" (<= {GOAL_IDLE_RSS_MB:g})"],
            ["idle", "RSS per target kB (idle)", f"{i['rss_per_target_kb']:.1f}", ""],
            ["idle", f"idle CPU % of one core ({i['idle_window_s']:.0f} s)",
             f"{i['idle_cpu_pct_of_one_core']:.2f}",
             common.goal(i["idle_cpu_pct_of_one_core"], GOAL_IDLE_CPU_PCT)
             + f" (< {GOAL_IDLE_CPU_PCT:g})"],
            ["idle", "  machine busy % (all cores, anyone)",
             common.rnd(i["idle_cpu_split"]["machine_busy_pct_of_all_cores"], 1), ""],
            ["idle", "max threads / fds", f"{i['max_threads']} / {i['max_fds']}", ""],
            ["idle", "SIGTERM to exit s", common.rnd(i["sigterm_to_exit_s"], 2), ""],
            ["idle", "invariants", "ok" if i["invariants_ok"] else "VIOLATED",
             f"{i['audit']['problem_count']} problems"],
        ]  # fmt: skip
    print()
    print(common.table(["part", "figure", "value", "goal"], rows))
    for part in ("busy", "idle"):
        if part in results and results[part]["audit"]["problems"]:
            print(f"{part} problems: {results[part]['audit']['problems'][:5]}")
    path = plot(results)
    if path is not None:
        results["plot"] = str(path)
        print(f"plot: {path}")
    print(f"results: {common.write_results('scale', results)}")


if __name__ == "__main__":
    main()
