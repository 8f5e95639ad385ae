"""Per-iteration bookkeeping cost as a target's history grows: 10, 1,000, 10,000 iterations.

Measured in-process on the real code. For each size N a state root gets a log of N
realistic entries (four scored dimensions, candidates, artifacts, keep/reject), then a real
`TargetRunner` (continuous mode) is prepared on it (start-up: lock, read the log, recover,
checkpoint) and its `_iterate()` is timed with the orchestrator replaced by an instant
canned result: everything one iteration costs besides the orchestrator itself (in-flight
checkpoint, log append with fsync, running totals, handoff, state checkpoint, log events).
It is timed twice, each from history N to N + reps (50; `--quick`: 20): with the real
fsyncs, and with `fsio._fsync` made a no-op, which leaves the CPU part. Goal: within the
3 ms overhead budget at 10,000.

Also timed at each size, without I/O: the stop-condition check the runner does
(`TargetRunner._stop_reason`), the generic path `Progress.from_entries(...).view()` + `stop_reason`,
`state.reconcile` (the full recomputation used at start-up), serialising the state
(`fsio.dumps_json`); plus the state and log file sizes and the memory a prepared runner
keeps (tracemalloc).

    .venv/bin/python bench/growth.py [--quick] [--sizes 10,1000,10000]

With `--memory`: instead, the memory the daemon keeps per iteration while a client polls
the control API (tests/helpers/api_memory.py: the daemon's parts in-process, two targets
running `/bin/echo` as orchestrator, `GET /api/status` and a target's history polled over
the unix socket, tracemalloc from the start, ten snapshots spread over 1,800 iterations after a
600-iteration warm-up), in bytes per iteration: the median of the slopes between each pair
of snapshots (Theil-Sen) of the traced bytes over the iterations (two snapshots alone
differ by several kB of bounded buffers' turnover, as much as 300 iterations' growth;
single blocks of 512 KiB or more are left out: the interpreter's table of interned strings
is one, and its one-off resize is not growth per iteration; ONE_OFF_BLOCK in
tests/helpers/api_memory.py), min/median/max over 3 rounds. Goal (issue 19): <= 16 B.

    .venv/bin/python bench/growth.py --memory [--rounds 3]
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common

GOAL_MS = 3.0
GOAL_BYTES_PER_ITERATION = 16.0
# --memory: snapshots after WARM_UP iterations and evenly over BETWEEN more; the figure is
# (WARM_UP takes each of the two targets past iteration 256: CPython keeps the ints up to
# 256 preallocated, so a bounded structure holding iteration numbers -- the 50-item score
# history of each target -- held no allocated int at a snapshot before that and 100 of them
# after: 3.3 kB over 900 iterations, 3.6 B each, that was never growth). BETWEEN: what
# bounded buffers hold moves a snapshot by ~10 kB either way; over 1,800 iterations that is
# half the error per iteration it was over 900 (12.0 / 15.1 / 17.6 B there, 2026-12-06).
# the median slope of traced bytes over iterations between pairs of snapshots
# (tests/helpers/api_memory.py: Growth.slope_bytes_per_iteration).
WARM_UP, BETWEEN, SNAPSHOTS = 600, 1800, 10
DIMENSIONS = ("accuracy", "coverage", "clarity", "consistency")


def build_log(state_root: Path, n: int, seed: int = 1) -> None:
    """Write an iteration log of n completed entries (bulk, no fsync: this is set-up)."""
    from autoloop_daemon.models import LogEntry
    from autoloop_daemon.storage.files import artifacts

    rng = random.Random(seed)
    state_root.mkdir(parents=True)
    base = 1_700_000_000.0
    lines = []
    best = 0.5
    for i in range(1, n + 1):
        score = min(0.99, 0.5 + 0.4 * (1 - 1 / (1 + i / 50)) + rng.uniform(-0.03, 0.03))
        decision = "keep" if score > best else "reject"
        best = max(best, score)
        scores = {d: round(min(1.0, max(0.0, score + rng.uniform(-0.05, 0.05))), 4)
                  for d in DIMENSIONS}  # fmt: skip
        start = base + i * 1800.0
        entry = LogEntry(
            iteration=i,
            started_at=_iso(start),
            finished_at=_iso(start + 95.0),
            status="completed",
            decision=decision,
            weighted_score=round(sum(scores.values()) / len(scores), 6),
            cost_usd=round(rng.uniform(0.05, 0.25), 6),
            duration_seconds=95.0,
            candidate_id=f"cand-{i:05d}-skill",
            artifact_path=f"{state_root}/receipts/gate-{i:05d}.json",
            scores=scores,
            exit_code=0,
        )
        lines.append(json.dumps(entry.to_json(), separators=(",", ":")))
    artifacts.log_path(state_root).write_text("\n".join(lines) + ("\n" if lines else ""))


def _iso(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def time_call(func: Callable[[], Any], min_s: float = 0.2, max_reps: int = 2000) -> float:
    """Median seconds of one call, over repeated calls for about `min_s`."""
    times = []
    deadline = time.perf_counter() + min_s
    while len(times) < max_reps and (len(times) < 5 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def new_runner(spec: Any) -> Any:
    """A target runner on the files backend with an unlimited budget (not yet prepared)."""
    from autoloop_daemon.engine import target_runner as target_mod
    from autoloop_daemon.engine.admission import RankedSlots
    from autoloop_daemon.engine.budget import SharedBudget
    from autoloop_daemon.engine.events import EventBus
    from autoloop_daemon.storage.files.store import FileTargetStore

    return target_mod.TargetRunner(
        spec,
        store=FileTargetStore(spec),
        budget=SharedBudget(1e12),
        slots=RankedSlots(1, fair_turns=True),
        events=EventBus(),
    )


def measure_size(work: Path, n: int, reps: int) -> dict[str, Any]:
    """Every figure for a history of n entries."""
    import anyio

    from autoloop_daemon.engine import iteration as iteration_mod
    from autoloop_daemon.models import IterationResult, TargetSpec
    from autoloop_daemon.policy import stops as convergence
    from autoloop_daemon.policy.progress import Progress
    from autoloop_daemon.storage.files import artifacts, fsio
    from tests.helpers import state_json as state

    root = work / f"state-{n}"
    target = work / f"target-{n}"
    target.mkdir()
    build_log(root, n)
    spec = TargetSpec(
        name=f"growth-{n}",
        path=target,
        state_root=root,
        mode="continuous",
        max_iterations=common.NO_LIMIT_ITERATIONS,
        max_cost_usd=common.NO_LIMIT_USD,
        plateau_window=3,  # the default: the plateau check looks at the whole history
        oscillation_window=4,
        cooldown_minutes=30,
        orchestrator=("true",),
        handoff_arg=None,
    )
    canned = IterationResult(
        status="completed",
        duration_s=0.0,
        decision="keep",
        candidate_id="cand-x",
        artifact_path="/tmp/artifact.json",
        scores={d: 0.71 for d in DIMENSIONS},
        cost_usd=0.12,
        exit_code=0,
    )

    async def instant(*_a: Any, **_kw: Any) -> IterationResult:
        return canned

    fsyncs = [0]
    real_fsync = fsio._fsync

    def counting_fsync(fd: int) -> None:
        fsyncs[0] += 1
        real_fsync(fd)

    def no_fsync(_fd: int) -> None:
        fsyncs[0] += 1

    out: dict[str, Any] = {"history": n}
    log_size = artifacts.log_path(root).stat().st_size

    async def prepared() -> Any:
        runner = new_runner(spec)
        await runner.prepare()
        return runner

    async def run() -> None:
        t0 = time.perf_counter()
        runner = await prepared()
        out["prepare_ms"] = (time.perf_counter() - t0) * 1e3
        out["runner_stop_reason_ms"] = time_call(runner._stop_reason) * 1e3
        runner._store.close()
        original = iteration_mod.run_iteration
        iteration_mod.run_iteration = instant  # type: ignore[assignment]
        try:
            for label, fsync in (("fsync", counting_fsync), ("no_fsync", no_fsync)):
                # The log grows by one line per call: truncate it back to n lines first, so
                # each mode runs from history n to n + reps.
                os.truncate(artifacts.log_path(root), log_size)
                state.state_path(root).unlink()
                runner = await prepared()
                fsio._fsync = fsync  # type: ignore[assignment]
                fsyncs[0] = 0
                times = []
                for _ in range(reps):
                    t1 = time.perf_counter()
                    await iteration_mod.Iteration(runner).run()
                    times.append(time.perf_counter() - t1)
                out[f"iterate_{label}_median_ms"] = statistics.median(times) * 1e3
                out[f"iterate_{label}_p90_ms"] = common.percentile(times, 90) * 1e3  # type: ignore[operator]
                if label == "fsync":
                    out["fsyncs_per_iteration"] = fsyncs[0] / reps
                fsio._fsync = real_fsync  # type: ignore[assignment]
                runner._store.close()
        finally:
            fsio._fsync = real_fsync  # type: ignore[assignment]
            iteration_mod.run_iteration = original  # type: ignore[assignment]

    anyio.run(run)

    entries, _ = artifacts.read_log(artifacts.log_path(root), repair=False)
    st = state.load_state(state.state_path(root))
    assert st is not None
    limits = convergence.Limits(
        max_iterations=common.NO_LIMIT_ITERATIONS,
        max_cost_usd=common.NO_LIMIT_USD,
        plateau_window=3,
        oscillation_window=4,
    )
    weights = spec.weights_map
    out["loop_view_plus_stop_reason_ms"] = (
        time_call(
            lambda: convergence.stop_reason(Progress.from_entries(entries, weights).view(), limits)
        )
        * 1e3
    )
    out["reconcile_ms"] = time_call(lambda: state.reconcile(st, entries, weights)) * 1e3
    out["dumps_state_ms"] = time_call(lambda: fsio.dumps_json(st)) * 1e3
    out["state_file_bytes"] = state.state_path(root).stat().st_size
    out["log_file_bytes"] = artifacts.log_path(root).stat().st_size
    out["entries_after"] = len(entries)
    out["memory_kb_per_runner"] = _runner_memory_kb(spec)
    return out


def _runner_memory_kb(spec: Any) -> float:
    """KiB still allocated by a prepared runner (its own copy of the state root)."""
    import anyio

    keep: list[Any] = []

    async def make() -> None:
        runner = new_runner(spec)
        await runner.prepare()
        runner._store.close()
        keep.append(runner)

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    anyio.run(make)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    keep.clear()
    return (after - before) / 1024


def plot(rows: list[dict[str, Any]], quick: bool) -> Path | None:
    """ms per iteration's bookkeeping against history size (needs matplotlib)."""
    plt = common.pyplot()
    if plt is None:
        return None
    sizes = [r["history"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    series = (
        ("iterate_fsync_median_ms", "one iteration's bookkeeping (fsync)"),
        ("iterate_no_fsync_median_ms", "same, fsync disabled (CPU part)"),
        ("runner_stop_reason_ms", "runner stop check"),
        ("loop_view_plus_stop_reason_ms", "loop_view + stop_reason"),
        ("reconcile_ms", "state.reconcile (start-up path)"),
    )
    for key, label in series:
        ax.plot(sizes, [max(r[key], 1e-4) for r in rows], marker="o", label=label)
    ax.axhline(GOAL_MS, color="red", linewidth=0.8, label=f"goal {GOAL_MS:g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("iterations in the history")
    ax.set_ylabel("ms")
    ax.set_title("autoloopd: cost per iteration vs history size")
    ax.legend(fontsize=7)
    return common.save_plot(plt, fig, "growth", quick)


def memory(rounds: int, keep: bool) -> None:
    """Bytes kept per iteration with the API polled, over `rounds` rounds."""
    from tests.helpers.api_memory import run_quietly

    figures: list[float] = []
    ends: list[float] = []
    with common.work_dir("growth-memory", keep) as work:
        info = common.machine(work)
        common.print_machine(info)
        for i in range(rounds):
            growth = run_quietly(
                work / f"round-{i}", targets=2, warm_up=WARM_UP, between=BETWEEN,
                snapshots=SNAPSHOTS,
            )  # fmt: skip
            figures.append(growth.slope_bytes_per_iteration)
            ends.append(growth.bytes_per_iteration)
            print(
                f"  round {i + 1}: {growth.slope_bytes_per_iteration:.1f} B per iteration "
                f"(median slope over {len(growth.points)} snapshots; last - first: "
                f"{growth.grown_bytes} B over {growth.iterations} iterations, "
                f"{growth.bytes_per_iteration:.1f} B each; {growth.requests} requests answered)",
                flush=True,
            )
            print("    traced bytes: " + ", ".join(f"{b} at {n}" for n, b in growth.points))
            for line in growth.top[:3]:
                print(f"    {line}")
    low, mid, high = min(figures), statistics.median(figures), max(figures)
    print(f"load average at end: {Path('/proc/loadavg').read_text().strip()}")
    print(
        f"bytes per iteration, API polled: {low:.1f} / {mid:.1f} / {high:.1f} "
        f"(min / median / max) {common.goal(mid, GOAL_BYTES_PER_ITERATION)}"
    )
    results = {"machine": info, "bytes_per_iteration": figures,
               "last_minus_first_per_iteration": ends,
               "goal_bytes_per_iteration": GOAL_BYTES_PER_ITERATION}  # fmt: skip
    print(f"results: {common.write_results('growth-memory', results)}")


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10,1000,10000")
    p.add_argument("--memory", action="store_true", help="bytes kept per iteration, API polled")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if args.memory:
        memory(args.rounds, args.keep)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    reps = 20 if args.quick else 50

    from autoloop_daemon.observers.logs import configure_logging

    rows = []
    with (
        common.work_dir("growth", args.keep) as work,
        open(os.devnull, "w") as devnull,
    ):
        info = common.machine(work)
        common.print_machine(info)
        # The daemon logs JSON at info level; render it the same way, into /dev/null.
        configure_logging("json", "info", stream=devnull)
        for n in sizes:
            with contextlib.redirect_stdout(devnull):
                row = measure_size(work, n, reps)
            rows.append(row)
            print(
                f"  history {n}: iteration bookkeeping {row['iterate_fsync_median_ms']:.2f} ms "
                f"({row['iterate_no_fsync_median_ms']:.2f} ms without fsync), "
                f"stop check {row['runner_stop_reason_ms'] * 1e3:.1f} us",
                flush=True,
            )
    table_rows = [
        [
            f"{r['history']}..{r['entries_after']}",
            f"{r['iterate_fsync_median_ms']:.3f}",
            f"{r['iterate_no_fsync_median_ms']:.3f}",
            f"{r['fsyncs_per_iteration']:.1f}",
            f"{r['runner_stop_reason_ms']:.4f}",
            f"{r['loop_view_plus_stop_reason_ms']:.3f}",
            f"{r['reconcile_ms']:.3f}",
            f"{r['dumps_state_ms']:.3f}",
            r["state_file_bytes"],
            r["log_file_bytes"],
            f"{r['prepare_ms']:.1f}",
            f"{r['memory_kb_per_runner']:.0f}",
            common.goal(r["iterate_fsync_median_ms"], GOAL_MS),
        ]
        for r in rows
    ]
    print()
    print(
        common.table(
            [
                "history",
                "iter ms",
                "iter ms no-fsync",
                "fsyncs",
                "stop check ms",
                "loop_view+stop ms",
                "reconcile ms",
                "dumps ms",
                "state B",
                "log B",
                "prepare ms",
                "runner KiB",
                f"goal <= {GOAL_MS:g} ms",
            ],
            table_rows,
        )
    )
    results: dict[str, Any] = {
        "machine": info,
        "quick": args.quick,
        "reps": reps,
        "sizes": rows,
        "goal_ms": GOAL_MS,
    }
    path = plot(rows, args.quick)
    if path is not None:
        results["plot"] = str(path)
        print(f"plot: {path}")
    print(f"results: {common.write_results('growth', results)}")


if __name__ == "__main__":
    main()
