"""`autoloopd status` with 10,000 targets, the daemon running, against the floor.

Starts `autoloopd --config` with N dry-run targets (one instant iteration each, then a
600 min cooldown; they are still working through those iterations, 32 at a time, while the
figures are taken), waits for READY=1, then times `autoloopd status --config FILE --json`
(which asks the daemon over its control socket) 5 times, each followed by the text form
(`autoloopd status --config FILE`); also once more (`--json`) with the daemon
stopped (the answer from the files). The floor, measured in the same run, is the start of
the same interpreter that does nothing (`python -c pass`): what any command costs.
Goal <= 0.3 s with the daemon running.

    .venv/bin/python bench/status.py [--quick] [--targets N]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common  # first: puts the repository on sys.path

from tests.helpers.daemon import Daemon
from tests.helpers.notify import NotifyListener
from tests.helpers.process import AUTOLOOPD, kill

GOAL_S = 0.3


def timed(argv: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    """Seconds to run `argv` to its end, and its result."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, cwd=cwd, timeout=120, check=False)
    return time.perf_counter() - t0, done


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--targets", type=int, default=None, help="default 10000 (quick 2000)")
    args = p.parse_args()
    n = args.targets or (2000 if args.quick else 10_000)
    runs = 5
    common.raise_nofile_limit(n + 4096)
    with common.work_dir("status", args.keep) as work:
        info = common.machine(work)
        common.print_machine(info)
        config = common.idle_config(work, n)
        status = [*AUTOLOOPD, "status", "--config", str(config), "--json"]
        floor = [sys.executable, "-c", "pass"]
        with NotifyListener(work) as notify:
            daemon = Daemon(config, work / "daemon.out", env=notify.env, cwd=work)
            try:
                notify.wait_ready(timeout=600)
                live: list[float] = []
                text_s: list[float] = []
                floor_s: list[float] = []
                for _ in range(runs):
                    seconds, done = timed(status, work)
                    report = json.loads(done.stdout)
                    assert report["daemon"]["source"] == "socket", report["daemon"]
                    assert len(report["targets"]) == n
                    live.append(seconds)
                    seconds, done = timed(status[:-1], work)
                    assert b"daemon: running" in done.stdout, done.stdout[-300:]
                    text_s.append(seconds)
                    floor_s.append(timed(floor, work)[0])
                common.stop_daemon(daemon.proc, timeout_s=300)
            finally:
                kill(daemon.proc)
        files_s, _ = timed(status, work)
    live_med, floor_med = statistics.median(live), statistics.median(floor_s)
    results = {
        "machine": info,
        "quick": args.quick,
        "targets": n,
        "status_daemon_running_s": live,
        "status_text_daemon_running_s": text_s,
        "status_from_files_s": files_s,
        "floor_interpreter_s": floor_s,
        "summary": {"status_median_s": live_med, "floor_median_s": floor_med,
                    "ratio": live_med / floor_med},
        "goal_s": GOAL_S,
    }  # fmt: skip
    rows = [
        [f"`autoloopd status --json`, {n} targets, daemon running", common.rnd(live_med, 3),
         f"{live_med / floor_med:.2f}x", common.goal(live_med, GOAL_S) + f" (<= {GOAL_S:g})"],
        [f"`autoloopd status` (text: busy rows + summary), {n} targets",
         common.rnd(statistics.median(text_s), 3),
         f"{statistics.median(text_s) / floor_med:.2f}x", ""],
        ["the same from the files (daemon stopped)", common.rnd(files_s, 3),
         f"{files_s / floor_med:.2f}x", ""],
        ["floor: `python -c pass`", common.rnd(floor_med, 3), "1.00x", ""],
    ]  # fmt: skip
    print(common.table(["figure", "seconds (median)", "ratio to floor", "goal"], rows))
    print(f"results: {common.write_results('status', results)}")


if __name__ == "__main__":
    main()
