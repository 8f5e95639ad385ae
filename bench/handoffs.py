"""What an iteration's worker hand-offs cost: the same work with 5, 2 or 1 of them.

One target's iteration does its file work in worker threads (anyio.to_thread), and each
hand-off wakes a worker and then the event loop. This measures, in one process, the work
of a single-run iteration with the daemon's own primitives (`fsio`, `open_run_log`, the
ctypes spawn with its pidfd, `content_hash`) arranged three ways, against the durability
floor of `check.py` (`common.durability_iteration`), interleaved, min / median / max of
the rounds:

* `5 hand-offs`, as the daemon made them until round 17 of issue 24 (it makes 3 now: the
  in-flight state with the run log's open; the run log's end with the content hash; the
  record): the in-flight state; the run log opened; the
  run (spawn, stdout and stderr read to their end, the exit); its output written to the
  run log; the target's content hash; the record (the log line appended with fsync, the
  handoff written).
* `2 hand-offs`: everything before the run in one call, everything after it in another.
* `1 hand-off`: the record of the previous run and everything before this one in one call
  (the last record after the loop).

Beside the floor it runs the floor plus the two files the contract also writes each
iteration and the floor leaves out (`contract floor`): the run log (created, the output
written) and the handoff (atomic, not fsynced), in the same plain loop. It also times one
bare hand-off (`anyio.to_thread.run_sync` of a no-op, one at a time). It
is a bound on what restructuring the hand-offs could gain, not a figure of the daemon: the
daemon adds its own work on the event loop (events, the live cost meter, the death watch,
the run's sweep) on top of each arrangement.

    .venv/bin/python bench/handoffs.py [--quick] [--iterations N] [--rounds N]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import common  # first: puts the repository on sys.path

from autoloop_daemon.runs.run_log import open_run_log
from autoloop_daemon.runs.spawn import spawn
from autoloop_daemon.runs.target_files import content_hash
from autoloop_daemon.storage.files import fsio

STATE = common.FLOOR_STATE_BYTES  # as the floor writes
LINE = common.FLOOR_LOG_LINE
HANDOFF = b"# Iteration handoff\n" * 9
ENV = dict(os.environ)
ARGV = common.echo_argv()


class Target:
    """A state root (with handoffs/ and runs/) and an empty target directory."""

    def __init__(self, work: Path, name: str) -> None:
        self.root = work / name / "state"
        self.path = work / name / "target"
        for directory in (self.root / "handoffs", self.root / "runs", self.path):
            directory.mkdir(parents=True)

    def before_run(self, k: int) -> int:
        """The in-flight state, then the run log opened (its descriptor)."""
        fsio.atomic_write_bytes(self.root / "autoloop_state.json", STATE)
        return open_run_log(self.root / "runs" / f"iteration-{k}.log")

    def record(self, k: int) -> None:
        """The log line (fsynced), then the handoff (atomic, not fsynced)."""
        fsio.append_record(self.root / "iteration_log.jsonl", LINE)
        handoff = self.root / "handoffs" / f"iteration-{k}.md"
        fsio.atomic_write_bytes(handoff, HANDOFF, durable=False)

    def after_run(self, k: int, fd: int, output: bytes) -> None:
        """The output into the run log, the hash, the record."""
        fsio.write_all(fd, output)
        os.close(fd)
        content_hash(self.path)
        self.record(k)

    def between_runs(self, k: int, last: tuple[int, bytes] | None) -> int:
        """The previous run's `after_run`, then this one's `before_run`."""
        if last is not None:
            self.after_run(k - 1, *last)
        return self.before_run(k)


async def run_child() -> bytes:
    """The orchestrator's run as the daemon starts it; its stdout."""
    process = await spawn(ARGV, cwd=None, env=ENV)
    output = b""
    assert process.stdout is not None and process.stderr is not None
    async for chunk in process.stdout:
        output += chunk
    async for _chunk in process.stderr:
        pass
    await process.wait()
    await process.aclose()
    return output


async def five(target: Target, n: int) -> None:
    """The daemon's arrangement until round 17 of issue 24 (it makes 3 hand-offs now)."""
    to_thread = anyio.to_thread.run_sync
    for k in range(1, n + 1):
        await to_thread(fsio.atomic_write_bytes, target.root / "autoloop_state.json", STATE)
        fd = await to_thread(open_run_log, target.root / "runs" / f"iteration-{k}.log")
        output = await run_child()
        await to_thread(fsio.write_all, fd, output)
        os.close(fd)
        await to_thread(content_hash, target.path)
        await to_thread(target.record, k)


async def two(target: Target, n: int) -> None:
    """One call before the run, one after it."""
    for k in range(1, n + 1):
        fd = await anyio.to_thread.run_sync(target.before_run, k)
        output = await run_child()
        await anyio.to_thread.run_sync(target.after_run, k, fd, output)


async def one(target: Target, n: int) -> None:
    """One call between two runs."""
    last: tuple[int, bytes] | None = None
    for k in range(1, n + 1):
        fd = await anyio.to_thread.run_sync(target.between_runs, k, last)
        last = (fd, await run_child())
    if last is not None:
        target.after_run(n, *last)


async def bare(n: int) -> None:
    """n hand-offs of a no-op, one at a time."""
    for _ in range(n):
        await anyio.to_thread.run_sync(int)


ARRANGEMENTS: dict[str, Callable[[Target, int], Awaitable[None]]] = {
    "5 hand-offs": five,
    "2 hand-offs": two,
    "1 hand-off": one,
}


def contract_floor(target: Target, n: int) -> None:
    """The durability floor plus the run log and the handoff, in a plain loop."""
    for k in range(1, n + 1):
        done = subprocess.run(ARGV, capture_output=True, stdin=subprocess.DEVNULL, check=True)
        fd = open_run_log(target.root / "runs" / f"iteration-{k}.log")
        fsio.write_all(fd, done.stdout)
        os.close(fd)
        target.record(k)
        fsio.atomic_write_bytes(target.root / "autoloop_state.json", STATE)


def measure(work: Path, n: int, rounds: int) -> dict[str, list[float]]:
    """ms per iteration of each arrangement and of the floors, per round (interleaved)."""
    times: dict[str, list[float]] = {"floor": [], "contract floor": []}
    times.update({name: [] for name in ARRANGEMENTS})
    times["bare hand-off"] = []
    for r in range(rounds):
        t0 = time.perf_counter()
        common.durability_floor_block(ARGV, n, work / f"floor{r}")
        times["floor"].append(1e3 * (time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        contract_floor(Target(work, f"contract-{r}"), n)
        times["contract floor"].append(1e3 * (time.perf_counter() - t0) / n)
        for name, arrangement in ARRANGEMENTS.items():
            target = Target(work, f"{name.split()[0]}-{r}")
            t0 = time.perf_counter()
            anyio.run(arrangement, target, n)
            times[name].append(1e3 * (time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        anyio.run(bare, 10 * n)
        times["bare hand-off"].append(1e3 * (time.perf_counter() - t0) / (10 * n))
    return times


def main() -> None:
    """Measure, print one line per arrangement, write results/handoffs.json."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=None, help="per round (default 200)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (at least 3)")
    args = p.parse_args()
    n = args.iterations or (50 if args.quick else 200)
    rounds = max(3, args.rounds)
    info = common.machine(common.ROOT)
    common.print_machine(info)
    with common.work_dir("handoffs", args.keep) as work:
        times = measure(work, n, rounds)
    floor = statistics.median(times["floor"])
    rows: list[list[Any]] = []
    for name, values in times.items():
        ratio = "" if name == "bare hand-off" else f"{statistics.median(values) / floor:.2f}x"
        rows.append([name, common.min_median_max(values, 3), ratio])
    print(f"{n} iterations per round, {rounds} rounds; load average {os.getloadavg()} at end")
    print(common.table(["arrangement", "ms per iteration (min / median / max)", "÷ floor"], rows))
    data = {"machine": info, "quick": args.quick, "iterations": n, "rounds": rounds, **times}
    print(f"results: {common.write_results('handoffs', data)}")


if __name__ == "__main__":
    main()
