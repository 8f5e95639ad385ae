"""Start-up of one target whose iteration log has 100,000 lines, against the floor.

What start-up does for a target (`TargetRunner.prepare`: lock, recover from the log,
checkpoint when something changed) is timed in-process on a warm state root (its state was
checkpointed by an earlier start, as after any clean stop), median of 7. The floor, measured
in the same run, is the same `prepare` of a target whose log has one line: what start-up
costs when the log is no work. Goal <= 0.1 s.

    .venv/bin/python bench/startlog.py [--quick] [--lines N]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import common  # first: puts the repository on sys.path
import growth

GOAL_S = 0.1


def _spec(work: Path, root: Path) -> Any:
    from autoloop_daemon.models import TargetSpec

    target = work / f"target-{root.name}"
    target.mkdir()
    return TargetSpec(
        name=root.name,
        path=target,
        state_root=root,
        mode="continuous",
        max_iterations=common.NO_LIMIT_ITERATIONS,
        max_cost_usd=common.NO_LIMIT_USD,
        plateau_window=3,
        oscillation_window=4,
        cooldown_minutes=30,
        orchestrator=("true",),
        handoff_arg=None,
    )


def prepare_times(spec: Any, runs: int) -> list[float]:
    """Seconds per `TargetRunner.prepare` of `spec` (the first, which checkpoints, excluded)."""
    import anyio

    from autoloop_daemon.engine.admission import RankedSlots
    from autoloop_daemon.engine.budget import SharedBudget
    from autoloop_daemon.engine.events import EventBus
    from autoloop_daemon.engine.target_runner import TargetRunner
    from autoloop_daemon.storage.files.store import FileTargetStore

    async def once() -> float:
        runner = TargetRunner(
            spec,
            store=FileTargetStore(spec),
            budget=SharedBudget(1e12),
            slots=RankedSlots(1, fair_turns=True),
            events=EventBus(),
        )
        t0 = time.perf_counter()
        await runner.prepare()
        elapsed = time.perf_counter() - t0
        runner._store.close()
        return elapsed

    async def main() -> list[float]:
        await once()  # the first start writes the checkpoint a clean stop would leave
        return [await once() for _ in range(runs)]

    return anyio.run(main)


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=None, help="default 100000 (quick 20000)")
    args = p.parse_args()
    lines = args.lines or (20_000 if args.quick else 100_000)
    runs = 3 if args.quick else 7
    with common.work_dir("startlog", args.keep) as work:
        info = common.machine(work)
        common.print_machine(info)
        big, small = work / "big", work / "small"
        growth.build_log(big, lines)
        growth.build_log(small, 1)
        big_s = prepare_times(_spec(work, big), runs)
        floor_s = prepare_times(_spec(work, small), runs)
    big_med, floor_med = statistics.median(big_s), statistics.median(floor_s)
    results = {
        "machine": info,
        "quick": args.quick,
        "lines": lines,
        "prepare_s": big_s,
        "floor_prepare_one_line_s": floor_s,
        "summary": {
            "prepare_median_s": big_med,
            "floor_median_s": floor_med,
            "ratio": big_med / floor_med,
        },
        "goal_s": GOAL_S,
    }
    rows = [
        [f"start-up of a target with a {lines:,}-line log", common.rnd(big_med, 4),
         f"{big_med / floor_med:.2f}x", common.goal(big_med, GOAL_S) + f" (<= {GOAL_S:g})"],
        ["floor: the same with a 1-line log", common.rnd(floor_med, 4), "1.00x", ""],
    ]  # fmt: skip
    print(common.table(["figure", "seconds (median)", "ratio to floor", "goal"], rows))
    print(f"results: {common.write_results('startlog', results)}")


if __name__ == "__main__":
    main()
