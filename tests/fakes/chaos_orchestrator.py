#!/usr/bin/env python3
"""A recording fake orchestrator for the cluster chaos tests (standard library only).

Each run appends one JSON line when it starts and one when it ends to the file `--record`
(one `os.write` on an O_APPEND descriptor each: runs of several hosts share the file and
never tear each other's lines). A line holds the run's target, iteration, host (the
daemon's AUTOLOOPD_CLUSTER__HOST_ID, inherited), fencing token (from AUTOLOOPD_FENCE),
AUTOLOOPD_RUN marker, pid and times (`t`: time.time(), `mono`: time.monotonic(), one
clock for every process of the machine). The run sleeps `--sleep` seconds of the
monotonic clock, which goes on while a process is stopped (a run frozen past its time
ends as soon as it is thawed), then writes its end line (`how`: "finished") and prints a
keep result with `--cost` (plus a millionth per iteration, so that sums are not round).
SIGTERM writes the end line with `how`: "terminated" and exits 143; a SIGKILL leaves the
run without an end line.

    chaos_orchestrator.py --record FILE --target T --iteration N [--sleep S] [--cost X]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The flags above; unknown ones (the real orchestrator's) are ignored."""
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--record", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--iteration", type=int, required=True)
    parser.add_argument("--sleep", type=float, default=0.4)
    parser.add_argument("--cost", type=float, default=0.05)
    args, _unknown = parser.parse_known_args(argv)
    return args


class Recorder:
    """Appends this run's lines to the shared record file."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Describe the run from the arguments and the environment the daemon gave it."""
        fence = os.environ.get("AUTOLOOPD_FENCE", "")
        name, _, token = fence.rpartition(":")
        self.base: dict[str, Any] = {
            "target": name or os.path.basename(args.target.rstrip("/")),
            "iteration": args.iteration,
            "host": os.environ.get("AUTOLOOPD_CLUSTER__HOST_ID"),
            "token": int(token) if token.isdigit() else None,
            "fence": fence or None,
            "run": os.environ.get("AUTOLOOPD_RUN"),
            "pid": os.getpid(),
        }
        self.fd = os.open(args.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, event: str, **extra: Any) -> None:
        """One line, one write."""
        line = {**self.base, "event": event, "t": time.time(), "mono": time.monotonic(), **extra}
        os.write(self.fd, (json.dumps(line) + "\n").encode())


def main(argv: list[str]) -> int:
    """Record the start, sleep, record the end, print the result."""
    args = parse_args(argv)
    recorder = Recorder(args)

    def terminated(signum: int, frame: object) -> None:
        recorder.write("end", how="terminated")
        os._exit(143)

    signal.signal(signal.SIGTERM, terminated)
    recorder.write("start")
    deadline = time.monotonic() + args.sleep
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(left)
    # From here on the run is done: a SIGTERM must not add a second end line.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    cost = round(args.cost + args.iteration / 1_000_000, 6)
    recorder.write("end", how="finished", cost_usd=cost)
    result = {
        "decision": "keep",
        "candidate_id": f"cand-{args.iteration:02d}",
        "scores": {"accuracy": 0.7, "coverage": 0.7},
        "weighted_score": 0.7,
        "cost_usd": cost,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
