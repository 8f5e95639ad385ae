"""Per-iteration overhead of autoloopd over a plain loop that spawns the same program.

One target in single-run mode runs a trivial orchestrator N times; a plain loop runs the same
argv N times with `subprocess.run` (output captured, nothing else). Both run in one process
of this benchmark, INTERLEAVED in blocks (autoloopd block, plain block, plain block,
autoloopd block, ...) so that drift of the machine hits both alike.

autoloopd's time per iteration is the spacing of consecutive `started_at` stamps in its
iteration log within one block (iteration k start - iteration k-1 start): one whole cycle
(stop check, budget, checkpoints with fsync, spawn, reading the output, recording), without
the process start-up. The state root is kept between blocks (the next block raises
--max-iterations), so the last block runs with a 450-entry history.

Overhead per iteration = median(autoloopd) - median(plain); goal <= 3 ms. The durability
floor, interleaved with the plain loop, is one spawn plus what an iteration's contract needs
on disk (`common.durability_iteration`: a log line appended with fsync, the state replaced
atomically with its fsyncs and the directory's); goal: autoloopd within 1.2x of it.

    .venv/bin/python bench/overhead.py [--quick] [--variant echo|python|both]
                                       [--breakdown] [--profile]

--breakdown runs autoloopd in-process with timers around its parts (thread hops, fsyncs,
spawn, checkpoints); --profile runs it under pyinstrument (bench/results/overhead_profile.txt).
"""

from __future__ import annotations

import itertools
import shlex
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import common  # first: puts the repository on sys.path

from tests.helpers.audit import audit_state_roots
from tests.helpers.logs import epoch_s, read_log
from tests.helpers.process import kill, start_autoloopd

GOAL_MS = 3.0
GOAL_FLOOR_RATIO = 1.2  # issue 14: per-iteration time within 1.2x the durability floor


def plain_block(argv: list[str], n: int) -> list[float]:
    """Seconds per `subprocess.run(argv)`, n times."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=True, timeout=60)
        times.append(time.perf_counter() - t0)
    return times


def daemon_args(
    target: Path, state_root: Path, argv: list[str], upto: int, handoff: bool
) -> list[str]:
    """The command line of one single-run block that runs up to iteration `upto`."""
    return [
        "--target", str(target),
        "--state-root", str(state_root),
        "--mode", "single-run",
        "--max-iterations", str(upto),
        "--max-cost", "1000000",
        "--plateau-window", "1000000",
        "--oscillation-window", "0",
        "--orchestrator-cmd", shlex.join(common.as_template(argv)),
        "--handoff-arg=" + ("--source" if handoff else ""),
    ]  # fmt: skip


def daemon_block(
    work: Path, target: Path, state_root: Path, argv: list[str], upto: int, n: int, handoff: bool
) -> dict[str, Any]:
    """Run autoloopd for iterations upto-n+1..upto; its intervals from the iteration log."""
    out = work / "daemon.out"
    t0 = time.perf_counter()
    proc = start_autoloopd(daemon_args(target, state_root, argv, upto, handoff), out, cwd=work)
    try:
        code = proc.wait(timeout=300)
    finally:
        kill(proc)
    wall = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"autoloopd exited {code}:\n{common.tail(out)}")
    entries = read_log(state_root)
    block = entries[upto - n : upto]
    starts = [epoch_s(e["started_at"]) for e in block]
    intervals = [b - a for a, b in itertools.pairwise(starts)]
    busy = epoch_s(block[-1]["finished_at"]) - starts[0]
    return {"wall_s": wall, "intervals": intervals, "in_loop_s": busy, "entries": len(entries)}


def run_variant(work: Path, name: str, argv: list[str], blocks: int, per_block: int) -> dict:
    """Interleaved blocks of autoloopd and the plain loop for one orchestrator."""
    target = work / f"target-{name}"
    state_root = work / f"state-{name}"
    target.mkdir()
    handoff = name != "echo"  # echo would print the appended --source FILE after the JSON
    subprocess.run(argv, capture_output=True, check=True)  # warm the page cache
    plain: list[float] = []
    floor: list[float] = []
    daemon: list[float] = []
    per_block_rows = []
    startup: list[float] = []
    for b in range(blocks):
        order = ("daemon", "plain") if b % 2 == 0 else ("plain", "daemon")
        row: dict[str, Any] = {"block": b + 1}
        for which in order:
            if which == "plain":
                times = plain_block(argv, per_block)
                plain += times
                row["plain_median_ms"] = statistics.median(times) * 1e3
                times = common.durability_floor_block(argv, per_block, work / "floor")
                floor += times
                row["floor_median_ms"] = statistics.median(times) * 1e3
            else:
                res = daemon_block(
                    work, target, state_root, argv, (b + 1) * per_block, per_block, handoff
                )
                daemon += res["intervals"]
                row["autoloopd_median_ms"] = statistics.median(res["intervals"]) * 1e3
                row["autoloopd_wall_per_iter_ms"] = res["wall_s"] / per_block * 1e3
                startup.append(res["wall_s"] - res["in_loop_s"])
        row["overhead_ms"] = row["autoloopd_median_ms"] - row["plain_median_ms"]
        per_block_rows.append(row)
        print(
            f"  [{name}] block {b + 1}/{blocks}: autoloopd {row['autoloopd_median_ms']:.2f} ms, "
            f"plain {row['plain_median_ms']:.2f} ms, overhead {row['overhead_ms']:.2f} ms",
            flush=True,
        )
    audit = audit_state_roots([state_root])
    med_d, med_p = statistics.median(daemon), statistics.median(plain)
    med_f = statistics.median(floor)
    return {
        "orchestrator": argv,
        "iterations": blocks * per_block,
        "blocks": blocks,
        "per_block": per_block,
        "handoff_arg": handoff,
        "plain_median_ms": med_p * 1e3,
        "plain_p10_ms": common.percentile(plain, 10) * 1e3,  # type: ignore[operator]
        "plain_p90_ms": common.percentile(plain, 90) * 1e3,  # type: ignore[operator]
        "autoloopd_median_ms": med_d * 1e3,
        "autoloopd_p10_ms": common.percentile(daemon, 10) * 1e3,  # type: ignore[operator]
        "autoloopd_p90_ms": common.percentile(daemon, 90) * 1e3,  # type: ignore[operator]
        "overhead_ms": (med_d - med_p) * 1e3,
        "floor_median_ms": med_f * 1e3,
        "ratio_to_floor": med_d / med_f,
        "overhead_ms_median_of_blocks": statistics.median(r["overhead_ms"] for r in per_block_rows),
        "ratio": med_d / med_p,
        "daemon_startup_and_exit_median_s": statistics.median(startup),
        "blocks_detail": per_block_rows,
        "audit": audit.as_dict(),
        "goal_overhead_ms": GOAL_MS,
    }


def profile_block(work: Path, argv: list[str], n: int, quick: bool) -> Path | None:
    """One more autoloopd run of n iterations under pyinstrument (if installed)."""
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        print("  --profile: pyinstrument is not installed (.venv/bin/pip install pyinstrument)")
        return None
    target, state_root = work / "target-profile", work / "state-profile"
    target.mkdir()
    out = common.RESULTS / f"{common.result_name('overhead', quick)}_profile.txt"
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    cmd = [
        common.PYTHON, "-m", "pyinstrument", "--interval", "0.0005", "-r", "text",
        "-o", str(out), "-m", "autoloop_daemon",
        *daemon_args(target, state_root, argv, n, handoff=False),
    ]  # fmt: skip
    subprocess.run(cmd, cwd=work, capture_output=True, check=True, timeout=600)
    return out


def breakdown(work: Path, argv: list[str], n: int) -> dict[str, Any]:
    """Where one iteration's time goes: autoloopd run in-process with timers around its parts.

    Wraps (without changing behaviour) `anyio.to_thread.run_sync` and
    `worker_threads.run_sync` (every hop to a worker thread: time awaited vs time working),
    `anyio.open_process`, asyncio's child watcher, `fsio._fsync`, and the target's `_save`,
    `run_iteration`, `_record`, `append_log`, `write_handoff`. Figures are per iteration,
    averaged over `n` iterations.
    """
    import asyncio
    import collections
    import contextlib
    import functools
    import threading

    import anyio
    import anyio.to_thread

    from autoloop_daemon import worker_threads
    from autoloop_daemon.cli import main as cli
    from autoloop_daemon.engine import iteration as iteration_mod
    from autoloop_daemon.engine import target_runner as target_mod
    from autoloop_daemon.storage.files import artifacts, fsio

    calls: collections.Counter[str] = collections.Counter()
    spent: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    restore: list[tuple[object, str, object]] = []

    def add(key: str, seconds: float) -> None:
        with lock:
            calls[key] += 1
            spent[key] += seconds

    def patch(owner: object, name: str, make: Any) -> None:
        original = getattr(owner, name)
        restore.append((owner, name, original))
        setattr(owner, name, make(original))

    def timed_async(key: str) -> Any:
        def make(original: Any) -> Any:
            @functools.wraps(original)
            async def wrapper(*a: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return await original(*a, **kw)
                finally:
                    add(key, time.perf_counter() - t0)

            return wrapper

        return make

    def timed_sync(key: str) -> Any:
        def make(original: Any) -> Any:
            @functools.wraps(original)
            def wrapper(*a: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return original(*a, **kw)
                finally:
                    add(key, time.perf_counter() - t0)

            return wrapper

        return make

    def hop(original: Any) -> Any:
        @functools.wraps(original)
        async def wrapper(func: Any, *a: Any, **kw: Any) -> Any:
            name = getattr(func, "__qualname__", repr(func))
            work = [0.0]

            def inner(*ia: Any) -> Any:
                t1 = time.perf_counter()
                try:
                    return func(*ia)
                finally:
                    work[0] = time.perf_counter() - t1

            t0 = time.perf_counter()
            try:
                return await original(inner, *a, **kw)
            finally:
                total = time.perf_counter() - t0
                add(f"thread hop: {name} (work)", work[0])
                add(f"thread hop: {name} (awaited)", total)
                add("thread hops (all, awaited)", total)
                add("thread hops (all, latency = awaited - work)", total - work[0])

        return wrapper

    patch(anyio.to_thread, "run_sync", hop)
    patch(worker_threads, "run_sync", hop)
    patch(anyio, "open_process", timed_async("anyio.open_process (fork/exec + child watcher)"))
    watcher = getattr(asyncio, "ThreadedChildWatcher", None)
    if watcher is not None:
        patch(watcher, "add_child_handler", timed_sync("ThreadedChildWatcher.add_child_handler"))
    patch(fsio, "_fsync", timed_sync("fsync"))
    patch(target_mod.TargetRunner, "_save", timed_async("TargetRunner._save (all)"))
    patch(iteration_mod.Iteration, "_record", timed_async("Iteration._record"))
    patch(iteration_mod, "run_iteration", timed_async("run_iteration"))
    patch(artifacts, "append_log", timed_async("artifacts.append_log"))
    patch(artifacts, "write_handoff", timed_async("artifacts.write_handoff"))
    target, state_root = work / "target-breakdown", work / "state-breakdown"
    target.mkdir()
    try:
        with (
            open(work / "breakdown.out", "w") as out,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(out),
        ):
            t0 = time.perf_counter()
            code = cli.main(daemon_args(target, state_root, argv, n, handoff=False))
            wall = time.perf_counter() - t0
    finally:
        for owner, name, original in reversed(restore):
            setattr(owner, name, original)
    starts = [epoch_s(e["started_at"]) for e in read_log(state_root)]
    intervals = [b - a for a, b in itertools.pairwise(starts)]
    rows = {
        key: {"calls_per_iter": calls[key] / n, "ms_per_iter": spent[key] / n * 1e3}
        for key in sorted(spent, key=lambda k: -spent[k])
    }
    return {
        "exit_code": code,
        "iterations": n,
        "wall_s": wall,
        "median_interval_ms": statistics.median(intervals) * 1e3,
        "mean_interval_ms": statistics.fmean(intervals) * 1e3,
        "parts": rows,
    }


def print_breakdown(b: dict[str, Any]) -> None:
    """The breakdown as a table."""
    print(
        f"breakdown ({b['iterations']} iterations in-process, echo): median interval "
        f"{b['median_interval_ms']:.2f} ms, mean {b['mean_interval_ms']:.2f} ms"
    )
    rows = [
        [key, f"{v['calls_per_iter']:.2f}", f"{v['ms_per_iter']:.3f}"]
        for key, v in b["parts"].items()
    ]
    print(common.table(["part (nested parts overlap)", "calls/iter", "ms/iter"], rows))


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--variant", choices=("echo", "python", "both"), default="both")
    p.add_argument("--profile", action="store_true", help="also profile autoloopd (pyinstrument)")
    p.add_argument(
        "--breakdown", action="store_true", help="also time autoloopd's parts (in-process)"
    )
    args = p.parse_args()
    blocks, per_block = (4, 25) if args.quick else (10, 50)
    variants = {"echo": common.echo_argv(), "python": common.python_argv()}
    chosen = list(variants) if args.variant == "both" else [args.variant]
    with common.work_dir("overhead", args.keep) as work:
        info = common.machine(work)
        common.print_machine(info)
        results: dict[str, Any] = {"machine": info, "quick": args.quick, "variants": {}}
        for name in chosen:
            print(f"{name}: {blocks} x {per_block} iterations, interleaved", flush=True)
            results["variants"][name] = run_variant(work, name, variants[name], blocks, per_block)
        if args.breakdown:
            results["breakdown"] = breakdown(work, variants["echo"], blocks * per_block)
        if args.profile:
            path = profile_block(work, variants["echo"], blocks * per_block, args.quick)
            results["profile"] = str(path) if path else None
            if path:
                print(f"profile: {path}")
    rows = []
    for name, r in results["variants"].items():
        rows.append(
            [
                name,
                r["iterations"],
                f"{r['autoloopd_median_ms']:.2f}",
                f"{r['plain_median_ms']:.2f}",
                f"{r['overhead_ms']:.2f}",
                f"{r['ratio']:.2f}x",
                f"{r['floor_median_ms']:.2f}",
                f"{r['ratio_to_floor']:.2f}x",
                f"{r['daemon_startup_and_exit_median_s']:.2f}",
                common.goal(r["overhead_ms"], GOAL_MS),
                common.goal(r["ratio_to_floor"], GOAL_FLOOR_RATIO),
            ]
        )
        if r["audit"]["problem_count"]:
            print(f"INVARIANT PROBLEMS ({name}): {r['audit']['problems']}")
    print()
    print(
        common.table(
            [
                "orchestrator",
                "iterations",
                "autoloopd ms/iter",
                "plain ms/iter",
                "overhead ms",
                "ratio",
                "floor ms/iter",
                "ratio to floor",
                "start+exit s",
                f"goal <= {GOAL_MS:g} ms",
                f"goal <= {GOAL_FLOOR_RATIO:g}x floor",
            ],
            rows,
        )
    )
    if "breakdown" in results:
        print()
        print_breakdown(results["breakdown"])
    print(f"results: {common.write_results('overhead', results)}")


if __name__ == "__main__":
    main()
