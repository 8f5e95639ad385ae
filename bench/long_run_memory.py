"""What a long-running fleet holds: peak RSS of a daemon whose targets all ran 50 iterations.

A runner keeps each target's newest 50 score_history items for as long as it runs, and a
restart loads them back; `check.py`'s busy windows (a few iterations per target) never get
there. This builds the fleet once: N targets (`/bin/echo <result JSON>`, one scored
dimension) run by a real daemon until each has run 50 iterations. Then, each round, a copy
of those state roots is restarted warm with a long cooldown: the peak RSS (VmHWM) once
every target is loaded, before any runs (`loaded`, the start-up's own peak), and 3 s after
every target has run its next iteration and cools down (`cooling`). Floor: the import floor
of check.py (an interpreter that imported every module of the package).

    .venv/bin/python bench/long_run_memory.py [--quick] [--targets N] [--rounds N]

N is 1,000 (`--quick`: 200); 3 rounds; min / median / max.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import common  # first: puts the repository on sys.path
import floors
import scale

from autoloop_daemon.policy.progress import SCORE_HISTORY_LIMIT
from tests.helpers.process import proc_status_kb


def build(work: Path, n: int) -> None:
    """Run `n` targets until each has run as many iterations as a runner keeps items; keep
    their state roots."""
    defaults = {**scale.busy_defaults(), "max_iterations": SCORE_HISTORY_LIMIT}
    config = scale.fleet_config(work, n, defaults)
    with scale.running(work, config, ready_timeout_s=600) as (daemon, *_):
        common.wait_all_status(daemon, "stopped_max_iter", n, timeout_s=3600, interval_s=2)
        common.stop_daemon(daemon.proc, timeout_s=120)
    shutil.move(work / "state", work / "built")


def one_round(work: Path, n: int) -> dict[str, float]:
    """A warm restart of a fresh copy of the built fleet: its peaks, loaded and cooling."""
    shutil.rmtree(work / "state", ignore_errors=True)
    shutil.copytree(work / "built", work / "state", symlinks=True)
    config = scale.fleet_config(work, n, {**scale.busy_defaults(), "cooldown_minutes": 600})
    with scale.running(work, config, ready_timeout_s=600) as (daemon, _, t0, _ready, loaded):
        at_loaded = proc_status_kb(daemon.pid)["VmHWM"] / 1024
        common.wait_all_status(daemon, "cooldown", n, timeout_s=600, interval_s=1)
        time.sleep(3)
        cooling = proc_status_kb(daemon.pid)["VmHWM"] / 1024
        common.stop_daemon(daemon.proc, timeout_s=120)
    return {"start_to_loaded_s": loaded.at - t0, "loaded_mb": at_loaded, "cooling_mb": cooling}


def main() -> None:
    """Build the fleet, restart it `--rounds` times, print and write the figures."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--targets", type=int, default=None)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    n = args.targets or (200 if args.quick else 1000)
    info = common.machine()
    common.print_machine(info)
    common.raise_nofile_limit(n + 4096)
    with common.work_dir("long_run_memory", args.keep) as work:
        t0 = time.monotonic()
        build(work, n)
        built_s = time.monotonic() - t0
        print(f"built: {n} targets x {SCORE_HISTORY_LIMIT} iterations in {built_s:.0f} s")
        rounds: list[dict[str, Any]] = []
        for _ in range(args.rounds):
            rounds.append({**one_round(work, n), "floor_mb": floors.import_floors_mb(1)[0]})
            print(" ".join(f"{k} {v:.2f}" for k, v in rounds[-1].items()), flush=True)

    def spread(key: str, digits: int = 1) -> str:
        return common.min_median_max([r[key] for r in rounds], digits)

    floor = spread("floor_mb")
    rows = [
        [f"peak RSS, {n} targets loaded, MB", spread("loaded_mb"), floor],
        [f"peak RSS, {n} targets cooling after a run, MB", spread("cooling_mb"), floor],
        ["spawn -> every target loaded, s", spread("start_to_loaded_s", 2), ""],
    ]
    print(f"min / median / max of {args.rounds} rounds")
    print(common.table(["figure", "value", "import floor (MB)"], rows))
    path = common.write_results(
        "long_run_memory",
        {
            "machine": info,
            "quick": args.quick,
            "targets": n,
            "history": SCORE_HISTORY_LIMIT,
            "rounds": rounds,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
