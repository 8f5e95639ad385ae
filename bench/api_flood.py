"""Fleet progress with 200 clients polling `GET /api/status`, against an idle API.

Starts `autoloopd --config` with 120 dry-run targets that iterate back to back (0.05 s
simulated iterations, no cooldown, 32 at a time), then alternates windows of `--seconds`:
idle API, flooded (200 client threads in a separate process, each polling the status over
the unix socket as fast as it is answered), idle, ... Each window's figure is the number of
`iteration_finished` events the daemon logged in it, per second. The ratio is a flooded
window's rate over the mean of the idle windows beside it (min/median/max over the rounds).
Also printed: status requests answered per second and their latency, and refused connects.
Goal: ratio >= 0.8 (issue 19: clients cannot starve the targets).

    .venv/bin/python bench/api_flood.py [--quick] [--rounds N] [--seconds S] [--clients N]
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common  # first: puts the repository on sys.path

from tests.helpers.config import write_config
from tests.helpers.daemon import Daemon
from tests.helpers.notify import NotifyListener
from tests.helpers.process import kill

GOAL_RATIO = 0.8
TARGETS = 120


def flood(sock_path: str, clients: int, seconds: float) -> None:
    """In the child process: `clients` threads polling the status for `seconds`; prints
    one JSON line {answered, refused, latencies_s (a sample)}."""
    stop_at = time.monotonic() + seconds
    answered = [0] * clients
    refused = [0] * clients
    latencies: list[float] = []

    def poll(i: int) -> None:
        request = b"GET /api/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(30)
                    s.connect(sock_path)
                    s.sendall(request)
                    while s.recv(65536):
                        pass
            except OSError:
                refused[i] += 1
                time.sleep(0.01)  # a refused client backs off a little, as curl in a loop
                continue
            answered[i] += 1
            if i % 10 == 0:
                latencies.append(time.monotonic() - t0)

    threads = [threading.Thread(target=poll, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"answered": sum(answered), "refused": sum(refused), "lat": latencies}))


def config(work: Path) -> Path:
    """120 dry-run targets iterating back to back."""
    targets = common.make_targets(work, TARGETS)
    daemon = {**common.daemon_table(work), "exit_when_idle": False}
    defaults = {
        "mode": "continuous",
        "dry_run": True,
        "simulated_seconds": 0.05,
        "max_iterations": 1_000_000,
        "max_cost_usd": common.NO_LIMIT_USD,
        "cooldown_minutes": 0,
        "plateau_window": 0,  # off: the targets never stop during the run
        "oscillation_window": 0,
        "estimated_cost_usd": 0.001,
    }
    return write_config(
        work / "config.toml",
        daemon=daemon,
        budget={"max_cost_usd": 100_000_000.0},
        defaults=defaults,
        targets=targets,
    )


class Finished:
    """Counts the daemon's `iteration_finished` lines, reading only what was appended."""

    def __init__(self, path: Path) -> None:
        """Follow `path`."""
        self.path, self.offset, self.count = path, 0, 0

    def now(self) -> int:
        """The count so far."""
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        self.count += complete.count(b'"iteration_finished"')
        return self.count


def window(log: Finished, seconds: float, flooder: list[str] | None) -> dict[str, Any]:
    """One window: iterations/s (and the flood's figures when `flooder` is given)."""
    before = log.now()
    proc = None if flooder is None else subprocess.Popen(flooder, stdout=subprocess.PIPE)
    t0 = time.monotonic()
    time.sleep(seconds)  # the window's length: what is measured is the daemon's progress in it
    after = log.now()
    rate = (after - before) / (time.monotonic() - t0)
    result: dict[str, Any] = {"iterations_per_s": rate}
    if proc is not None:
        out, _ = proc.communicate(timeout=120)
        figures = json.loads(out)
        lat = figures.pop("lat")
        result.update(
            status_per_s=figures["answered"] / seconds,
            refused=figures["refused"],
            latency_median_s=statistics.median(lat) if lat else None,
            latency_p99_s=common.percentile(lat, 99),
        )
    return result


def main() -> None:
    """Run the rounds and print the figures."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None, help="default 3")
    p.add_argument("--seconds", type=float, default=None, help="window length (20; quick 6)")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--flood", nargs=3, help=argparse_hidden())
    args = p.parse_args()
    if args.flood:
        flood(args.flood[0], int(args.flood[1]), float(args.flood[2]))
        return
    rounds, seconds = args.rounds or 3, args.seconds or (6.0 if args.quick else 20.0)
    with common.work_dir("api_flood", args.keep) as work:
        info = common.machine(work)
        common.print_machine(info)
        sock = work / "state" / "autoloopd.sock"
        flooder = [sys.executable, __file__, "--flood", str(sock), str(args.clients), str(seconds)]
        with NotifyListener(work) as notify:
            daemon = Daemon(config(work), work / "daemon.out", env=notify.env, cwd=work)
            try:
                notify.wait_ready(timeout=300)
                log = Finished(daemon.out)
                window(log, seconds, None)  # warm-up
                idle = [window(log, seconds, None)]
                flooded = []
                for _ in range(rounds):
                    flooded.append(window(log, seconds, flooder))
                    idle.append(window(log, seconds, None))
                common.stop_daemon(daemon.proc, timeout_s=120)
            finally:
                kill(daemon.proc)
    report(info, args, idle, flooded)


def report(info: dict[str, Any], args: Any, idle: list[dict[str, Any]],
           flooded: list[dict[str, Any]]) -> None:  # fmt: skip
    """Print the table and write results/api_flood.json."""
    ratios = [
        f["iterations_per_s"] / statistics.mean([idle[i]["iterations_per_s"],
                                                 idle[i + 1]["iterations_per_s"]])
        for i, f in enumerate(flooded)
    ]  # fmt: skip
    rows = [
        ("idle iterations/s", *_mmm([w["iterations_per_s"] for w in idle])),
        ("flooded iterations/s", *_mmm([f["iterations_per_s"] for f in flooded])),
        ("ratio flooded/idle", *_mmm(ratios)),
        ("status answered/s", *_mmm([f["status_per_s"] for f in flooded])),
        ("status latency median s", *_mmm([f["latency_median_s"] or 0.0 for f in flooded])),
        ("status latency p99 s", *_mmm([f["latency_p99_s"] or 0.0 for f in flooded])),
        ("refused connects", *_mmm([float(f["refused"]) for f in flooded])),
    ]
    print(common.table(["figure", "min", "median", "max"], rows))
    median_ratio = statistics.median(ratios)
    print(f"goal: ratio >= {GOAL_RATIO}: {'holds' if median_ratio >= GOAL_RATIO else 'MISSES'}")
    path = common.write_results(
        "api_flood",
        {"machine": info, "quick": args.quick, "clients": args.clients, "targets": TARGETS,
         "seconds": args.seconds, "idle": idle, "flooded": flooded, "ratios": ratios,
         "goal_ratio": GOAL_RATIO},
    )  # fmt: skip
    print(f"written: {path}")


def _mmm(values: list[float]) -> tuple[float | None, float | None, float | None]:
    return (common.rnd(min(values)), common.rnd(statistics.median(values)),
            common.rnd(max(values)))  # fmt: skip


def argparse_hidden() -> str:
    """The help of the internal `--flood SOCK CLIENTS SECONDS` (the client process)."""
    return "internal: run the clients (SOCKET CLIENTS SECONDS)"


if __name__ == "__main__":
    main()
