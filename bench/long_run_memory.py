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
import statistics
import time
from pathlib import Path
from typing import Any

import common  # first: puts the repository on sys.path
import floors
import scale

HISTORY = 50  # the items a runner keeps (policy/progress.SCORE_HISTORY_LIMIT)


def build(work: Path, n: int) -> None:
    """Run `n` targets until each has run `HISTORY` iterations; keep their state roots."""
    config = scale.fleet_config(work, n, {**scale.busy_defaults(), "max_iterations": HISTORY})
    with scale.running(work, config, ready_timeout_s=600) as (daemon, *_):
        common.wait_all_status(daemon, "stopped_max_iter", n, timeout_s=3600, interval_s=2)
        common.stop_daemon(daemon.proc, timeout_s=120)
    shutil.move(work / "state", work / "built")


def _vm_mb(pid: int) -> dict[str, float]:
    return {
        key: int(value.split()[0]) / 1024
        for key, _, value in (line.partition(":") for line in open(f"/proc/{pid}/status"))
        if key in ("VmRSS", "VmHWM")
    }


def one_round(work: Path, n: int) -> dict[str, float]:
    """A warm restart of a fresh copy of the built fleet: its peaks, loaded and cooling."""
    shutil.rmtree(work / "state", ignore_errors=True)
    shutil.copytree(work / "built", work / "state", symlinks=True)
    config = scale.fleet_config(work, n, {**scale.busy_defaults(), "cooldown_minutes": 600})
    with scale.running(work, config, ready_timeout_s=600) as (daemon, _, t0, _ready, loaded):
        at_loaded = _vm_mb(daemon.pid)["VmHWM"]
        common.wait_all_status(daemon, "cooldown", n, timeout_s=600, interval_s=1)
        time.sleep(3)
        cooling = _vm_mb(daemon.pid)["VmHWM"]
        common.stop_daemon(daemon.proc, timeout_s=120)
    return {"start_to_loaded_s": loaded.at - t0, "loaded_mb": at_loaded, "cooling_mb": cooling}


def _mmm(values: list[float], digits: int = 1) -> str:
    spread = (min(values), statistics.median(values), max(values))
    return "/".join(f"{v:.{digits}f}" for v in spread)


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
        print(f"built: {n} targets x {HISTORY} iterations in {time.monotonic() - t0:.0f} s")
        rounds: list[dict[str, Any]] = []
        for _ in range(args.rounds):
            rounds.append({**one_round(work, n), "floor_mb": floors.import_floors_mb(1)[0]})
            print(" ".join(f"{k} {v:.2f}" for k, v in rounds[-1].items()), flush=True)
    floor = _mmm([r["floor_mb"] for r in rounds])
    rows = [
        [f"peak RSS, {n} targets loaded, MB", _mmm([r["loaded_mb"] for r in rounds]), floor],
        [f"peak RSS, {n} targets cooling after a run, MB",
         _mmm([r["cooling_mb"] for r in rounds]), floor],
        ["spawn -> every target loaded, s", _mmm([r["start_to_loaded_s"] for r in rounds], 2), ""],
    ]  # fmt: skip
    print(f"min / median / max of {args.rounds} rounds")
    print(common.table(["figure", "value", "import floor (MB)"], rows))
    path = common.write_results(
        "long_run_memory",
        {"machine": info, "quick": args.quick, "targets": n, "history": HISTORY, "rounds": rounds},
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
