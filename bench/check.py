"""Issue 24's speed figures, each against a floor measured in the same run: one command.

    .venv/bin/python bench/check.py [--quick] [--rounds N] [--json FILE] [--keep] [--plan]

Prints a header (cores, load average at start and end, commit, date) and one line per
figure: value, floor, ratio (value / floor), goal, and `holds` or `MISSES`. Value, floor and
ratio are min/median/max over the rounds (3 by default); a figure holds when its median
meets the goal. `--json FILE` writes the same as JSON (default `bench/results/check.json`,
`check-quick.json` for `--quick`). It is a report, not a gate: the exit code is 0 whenever
every measurement ran, 1 when one failed (named on stderr and in the table). `--plan`
prints the figures, goals, floors and sizes as JSON and measures nothing.

The daemon runs through its real CLI (`python -m autoloop_daemon`), as in the other
benchmarks, whose measuring code this reuses. The package is byte-compiled first where its
bytecode is missing (`common.compile_package`), as `pip install .` leaves it: under
PYTHONDONTWRITEBYTECODE=1 an editable install would otherwise compile it at every start.
The figures and their floors:

* `iteration`: one target in single-run mode, `/bin/echo <result JSON>` as orchestrator
  (overhead.py's echo variant), time per iteration from its own log. Floor: the durability
  floor (`common.durability_iteration`: the same spawn, a log line appended with fsync, the
  state replaced atomically with fsync and a directory fsync), a plain loop interleaved
  with the daemon's block. This is all an iteration's contract needs; the goal (1.2x) is on
  the ratio.
* `cpu_per_iteration` and `iterations_per_s`: 1,000 targets, 1 s cooldown,
  `max_concurrent_iterations = 32`, echo (scale.py's busy part), measured in windows after
  READY=1: the daemon's utime+stime per iteration finished in the window, and iterations
  per second. Floors, plain Python on the same machine: for CPU, an asyncio loop that
  spawns the same echo 32 at a time and makes one `asyncio.to_thread` hand-off per run (the
  least an event-loop daemon pays per iteration; CPU of this process per run); for
  throughput, 32 threads each looping on `common.durability_iteration` (the same spawn and
  writes, no event loop).
* `memory`: peak RSS (VmHWM) of the daemon in that busy run, read at the end of each
  window. Floor: a bare interpreter that imported every module of the package (all but
  `__main__` and the PostgreSQL backend, which a files-mode daemon never loads): what the
  code costs before any target exists.
* `ready_warm`, `sigterm_exit` and `status`: N dry-run targets (10,000; `--quick` 500)
  cooling down for 600 min (startstop.py's cycle): a fresh start makes their state roots,
  then each round is a warm restart: spawn -> READY=1, every target cooling
  (`autoloopd status --json`), then the daemon quiet (under 25 ms of CPU in 0.5 s:
  `status` may say cooling while the targets' tasks still start: one SIGTERM at 10,000
  was handled 1.3 s late, behind that work), `autoloopd status --config F
  --json` timed once, SIGTERM -> exit (its exit code must be 0). Floors: for READY,
  taking each state root's lock (flock) and reading its state file and log, one after the
  other, on the same files after the daemon exited; for SIGTERM, writing as many files of
  the state file's size and making them durable with one syncfs (startstop.sync_floor);
  for status, the client's own floor:
  one HTTP request on the control socket and `json.loads` of the same payload, in this
  process, right after the timed `status`. The text form, `autoloopd status --config F`
  (the targets with something to tell and the summary), is timed once more per round and
  printed in the figure's notes (`text N s`). READY's notes say how long after READY=1
  every target was loaded and cooling (`all cooling N s later`) and quiet (`quiet N s
  after`): READY comes once the roots are locked, and the states load after it.

Busy rounds are windows: the full form runs 3 daemons with one 15 s window each (each
round its own process and peak), `--quick` one daemon with 3 windows of 1 s (so the memory
rounds of `--quick` are one process's peak read three times). The full form takes about
5 minutes on a 2-core machine (287 s at load 2-4); `--quick` 32-62 s at load 8-12.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common  # first: puts the repository on sys.path
import floors
import overhead
import scale
import startstop
import status as status_bench

from tests.helpers.audit import audit_state_roots
from tests.helpers.daemon import Daemon
from tests.helpers.logs import epoch_s
from tests.helpers.process import AUTOLOOPD, proc_status_kb


@dataclass(frozen=True)
class Figure:
    """One row of issue 24's table: what is measured, its unit, its goal and its floor."""

    key: str
    name: str
    unit: str
    goal: float
    floor: str
    at_least: bool = False  # the goal is a minimum (iterations/s), else a maximum
    on_ratio: bool = False  # the goal applies to value / floor, not to the value

    def goal_text(self) -> str:
        """The goal as the issue writes it."""
        sign = ">=" if self.at_least else "<="
        what = "x floor" if self.on_ratio else f" {self.unit}"
        extra = ", exit 0" if self.key == "sigterm_exit" else ""
        return f"{sign} {self.goal:g}{what}{extra}"


FIGURES: tuple[Figure, ...] = (
    Figure("iteration", "one target, time per iteration", "ms", 1.2,
           "spawn + log append fsync + state replace fsync + dir fsync", on_ratio=True),
    Figure("cpu_per_iteration", "daemon CPU per iteration, 32 concurrent", "ms", 1.5,
           "asyncio spawn (32 at a time) + one worker hand-off, CPU per run"),
    Figure("iterations_per_s", "iterations/s, 32 concurrent, trivial orchestrator", "/s",
           600, "32 threads: the same spawn and writes", at_least=True),
    Figure("memory", "memory (peak RSS), 1,000 targets", "MB", 60,
           "bare interpreter with the package imported"),
    Figure("ready_warm", "READY, N targets, warm", "s", 3.0,
           "flock + read every state file and log"),
    Figure("sigterm_exit", "SIGTERM -> exit, N cooling", "s", 2.0,
           "as many state-sized files written + one syncfs"),
    Figure("status", "`status --json`, N targets, daemon running", "s", 0.3,
           "one socket round trip + json.loads of the same payload"),
)  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    """How much each part measures (the full form, or `--quick`)."""

    rounds: int
    per_block: int  # iterations per round of the one-target part
    busy_targets: int
    busy_runs: int
    busy_windows: int  # per run; rounds = runs x windows
    window_s: float
    warmup_s: float
    floor_runs: int  # spawns per round of the CPU and throughput floors
    fleet: int  # N of the READY / SIGTERM / status figures

    @classmethod
    def of(cls, quick: bool, rounds: int) -> Sizes:
        """The sizes of the full form or of `--quick`, with `rounds` rounds."""
        if quick:
            return cls(rounds, 10, 1000, 1, rounds, 1.0, 0.5, 48, 500)
        return cls(rounds, 60, 1000, rounds, 1, 15.0, 3.0, 960, 10_000)


@dataclass
class Rounds:
    """One figure's measurements: a value and its floor per round, notes, or a failure."""

    values: list[float] = field(default_factory=list)
    floors: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: str | None = None

    def add(self, value: float, floor: float) -> None:
        """One round's value and floor."""
        self.values.append(value)
        self.floors.append(floor)

    def ratios(self) -> list[float]:
        """value / floor per round."""
        return [v / f for v, f in zip(self.values, self.floors, strict=True) if f > 0]


def spread(values: Sequence[float]) -> list[float] | None:
    """[min, median, max], or None for no values."""
    return [min(values), statistics.median(values), max(values)] if values else None


def holds(figure: Figure, rounds: Rounds) -> bool | None:
    """Whether the median meets the goal (and SIGTERM exited 0 every round); None: no data."""
    judged = spread(rounds.ratios() if figure.on_ratio else rounds.values)
    if judged is None or rounds.failed:
        return None
    ok = judged[1] >= figure.goal if figure.at_least else judged[1] <= figure.goal
    if figure.key == "sigterm_exit":
        ok = ok and all(note == "exit 0" for note in rounds.notes)
    return ok


# --- the one-target part ---------------------------------------------------------------


def iteration_rounds(work: Path, sizes: Sizes) -> Rounds:
    """Per round: a block of single-run iterations of the daemon, then the durability
    floor's loop of as many iterations; ms per iteration, medians of the block."""
    argv = common.echo_argv()
    target, state_root = work / "target", work / "state-one"
    target.mkdir()
    out = Rounds()
    for r in range(1, sizes.rounds + 1):
        upto = r * sizes.per_block
        block = overhead.daemon_block(
            work, target, state_root, argv, upto, sizes.per_block, handoff=False
        )
        floor = common.durability_floor_block(argv, sizes.per_block, work / "floor")
        out.add(statistics.median(block["intervals"]) * 1e3, statistics.median(floor) * 1e3)
    return out


# --- the busy part: CPU per iteration, iterations/s, memory ------------------------------


def busy_rounds(work: Path, sizes: Sizes) -> dict[str, Rounds]:
    """`busy_runs` daemons of `busy_targets` targets, each measured in `busy_windows`
    windows after READY=1 and a warm-up; after each run, one floor per window."""
    parts = {key: Rounds() for key in ("cpu_per_iteration", "iterations_per_s", "memory")}
    for run in range(1, sizes.busy_runs + 1):
        run_dir = work / f"run{run}"  # a fresh fleet each run, as scale.py's busy part
        run_dir.mkdir()
        config = scale.fleet_config(run_dir, sizes.busy_targets, scale.busy_defaults())
        windows = busy_windows(run_dir, config, sizes)
        memory_floors = floors.import_floors_mb(len(windows))
        for w, memory_floor in zip(windows, memory_floors, strict=True):
            cpu_floor = floors.asyncio_cpu_floor_ms(sizes.floor_runs)
            rate_floor = floors.threaded_rate_floor(sizes.floor_runs, work / "floor")
            parts["cpu_per_iteration"].add(w["cpu_ms_per_iteration"], cpu_floor)
            parts["iterations_per_s"].add(w["iterations_per_s"], rate_floor)
            parts["memory"].add(w["peak_rss_mb"], memory_floor)
    return parts


def busy_windows(work: Path, config: Path, sizes: Sizes) -> list[dict[str, float]]:
    """One busy daemon: its CPU, peak RSS and finished iterations in each window."""
    marks: list[tuple[float, float, float]] = []  # (wall clock, CPU s, VmHWM MB) per mark
    with scale.running(work, config, ready_timeout_s=300) as started:
        time.sleep(sizes.warmup_s)
        for _ in range(sizes.busy_windows + 1):
            if marks:
                time.sleep(sizes.window_s)
            cpu = common.proc_cpu_detail_s(started.daemon.pid)
            mem = proc_status_kb(started.daemon.pid)
            if not cpu or not mem:
                raise RuntimeError(f"the busy daemon died:\n{common.tail(started.daemon.out)}")
            marks.append((time.time(), cpu["utime"] + cpu["stime"], mem["VmHWM"] / 1024))
        common.stop_daemon(started.daemon.proc, timeout_s=120)
    finished = sorted(
        epoch_s(e["timestamp"])
        for e in started.daemon.events("iteration_finished")
        if "timestamp" in e
    )
    roots = [r for r in (work / "state").iterdir() if r.is_dir()]
    audit = audit_state_roots(roots, allowed_status={"stopped_signal", "cooldown"})
    if audit.problems or audit.log_lines != len(finished):
        raise RuntimeError(
            f"busy run: invariants violated: {audit.problems[:3]}, {audit.log_lines} log "
            f"lines for {len(finished)} iteration_finished events"
        )
    windows = []
    for (t0, cpu0, _), (t1, cpu1, hwm) in itertools.pairwise(marks):
        count = sum(1 for at in finished if t0 <= at < t1)
        windows.append(
            {
                "cpu_ms_per_iteration": 1e3 * (cpu1 - cpu0) / max(count, 1),
                "iterations_per_s": count / (t1 - t0),
                "peak_rss_mb": hwm,
            }
        )
    return windows


# --- the fleet part: READY warm, SIGTERM -> exit, status ---------------------------------


def fleet_rounds(work: Path, sizes: Sizes) -> dict[str, Rounds]:
    """A fresh start (not measured) to make N state roots, then one warm restart per round
    (startstop.one_cycle), with `status` timed while every target cools down."""
    n = sizes.fleet
    common.raise_nofile_limit(n + 4096)
    config = common.idle_config(work, n)
    startstop.one_cycle(work, config, n, "fresh")
    parts = {key: Rounds() for key in ("ready_warm", "sigterm_exit", "status")}
    for _ in range(sizes.rounds):
        cycle = startstop.one_cycle(work, config, n, "warm", while_cooling=timed_status)
        if not cycle["states_ok"]:
            raise RuntimeError(f"fleet: state roots wrong after a stop: {cycle['audit']}")
        roots = [r for r in (work / "state").iterdir() if r.is_dir()]
        size = (roots[0] / floors.STATE_FILE).stat().st_size
        parts["ready_warm"].add(cycle["start_to_ready_s"], floors.lock_and_read_floor(roots))
        cooled_s = cycle["ready_to_all_cooling_s"]
        quiet_s = cycle["cooling_to_quiet_s"]
        parts["ready_warm"].notes.append(
            f"all cooling {cooled_s:.1f} s later, quiet {quiet_s:.1f} s after"
        )
        stop_s = cycle["sigterm_to_exit_s"]
        if stop_s is None:
            raise RuntimeError("fleet: the daemon did not exit within 120 s of SIGTERM")
        parts["sigterm_exit"].add(stop_s, startstop.sync_floor(work, n, size))
        parts["sigterm_exit"].notes.append(f"exit {cycle['exit_code']}")
        parts["status"].add(cycle["status_s"], cycle["status_floor_s"])
        parts["status"].notes.append(f"text {cycle['status_text_s']:.3f} s")
    return parts


def timed_status(daemon: Daemon) -> dict[str, Any]:
    """`autoloopd status --json` timed once, then its floor: the same request on the
    control socket and `json.loads` of the reply, in this process; then the text form
    (`autoloopd status`: the targets with something to tell and the summary), once."""
    argv = [*AUTOLOOPD, "status", "--config", str(daemon.config), "--json"]
    seconds, done = status_bench.timed(argv, daemon.config.parent)
    report = json.loads(done.stdout)
    if report["daemon"]["source"] != "socket":
        raise RuntimeError(f"status did not ask the daemon: {report['daemon']}")
    sock = daemon.config.parent / "state" / "autoloopd.sock"
    t0 = time.perf_counter()
    json.loads(floors.http_get(sock, "/api/status"))
    floor_s = time.perf_counter() - t0
    text_s, text = status_bench.timed(argv[:-1], daemon.config.parent)
    if b"daemon: running" not in text.stdout:
        raise RuntimeError(f"status (text) did not ask the daemon: {text.stdout[-300:]!r}")
    return {"status_s": seconds, "status_floor_s": floor_s, "status_text_s": text_s}


# --- running the parts, the report --------------------------------------------------------

PARTS: tuple[tuple[str, tuple[str, ...], Callable[[Path, Sizes], Any]], ...] = (
    (
        "one target",
        ("iteration",),
        lambda work, sizes: {"iteration": iteration_rounds(work, sizes)},
    ),
    ("busy", ("cpu_per_iteration", "iterations_per_s", "memory"), busy_rounds),
    ("fleet", ("ready_warm", "sigterm_exit", "status"), fleet_rounds),
)


def measure(sizes: Sizes, keep: bool) -> dict[str, Rounds]:
    """Every part in its own directory; a part that fails marks its figures failed."""
    results: dict[str, Rounds] = {}
    for name, keys, run in PARTS:
        t0 = time.monotonic()
        with common.work_dir(f"check-{name.replace(' ', '-')}", keep) as work:
            try:
                results.update(run(work, sizes))
                print(f"measured: {name} in {time.monotonic() - t0:.1f} s", file=sys.stderr)
            except Exception as exc:  # a report: say which measurement failed, go on
                traceback.print_exc()
                reason = f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                print(f"FAILED measurement: {reason}", file=sys.stderr, flush=True)
                results.update({key: Rounds(failed=reason) for key in keys})
    return results


def fmt(values: list[float] | None, unit: str = "") -> str:
    """min/median/max with 3 significant digits, or '-'."""
    if values is None:
        return "-"
    return "/".join(f"{v:.3g}" for v in values) + unit


def report(info: dict[str, Any], results: dict[str, Rounds], sizes: Sizes) -> dict[str, Any]:
    """The JSON report: the header's facts and one entry per figure."""
    figures = []
    for fig in FIGURES:
        rounds = results.get(fig.key, Rounds(failed="not measured"))
        verdict = holds(fig, rounds)
        figures.append(
            {
                "key": fig.key,
                "name": fig.name.replace("N ", f"{sizes.fleet:,} "),
                "unit": fig.unit,
                "value": spread(rounds.values),
                "floor": spread(rounds.floors),
                "ratio": spread(rounds.ratios()),
                "goal": fig.goal_text(),
                "holds": verdict,
                "floor_is": fig.floor,
                "rounds": {"values": rounds.values, "floors": rounds.floors},
                "notes": rounds.notes,
                "failed": rounds.failed,
            }
        )
    return {"machine": info, "sizes": sizes.__dict__, "figures": figures}


def print_report(data: dict[str, Any], elapsed_s: float, quick: bool) -> None:
    """The header line and one line per figure."""
    info = data["machine"]
    load = " ".join(f"{x:.2f}" for x in info["loadavg_at_start"])
    end = " ".join(f"{x:.2f}" for x in info["loadavg_at_end"])
    print(
        f"bench/check.py{' --quick' if quick else ''}: {info['cores']} cores, load average "
        f"{load} at start, {end} at end, git {info.get('git_commit', '?')}, "
        f"{info['date']}, {elapsed_s:.0f} s; min/median/max of {data['sizes']['rounds']}+ rounds"
    )
    if not info.get("bytecode_compiled", True):
        print("(a module of the package could not be byte-compiled: it compiles at each start)")
    rows = []
    for f in data["figures"]:
        unit = "" if f["unit"] in ("/s",) else f" {f['unit']}"
        verdict = {True: "holds", False: "MISSES", None: "FAILED"}[f["holds"]]
        note = f["failed"] or ", ".join(sorted(set(f["notes"])))
        rows.append(
            [f["name"], fmt(f["value"], unit), fmt(f["floor"], unit), fmt(f["ratio"], "x"),
             f["goal"], verdict, note]
        )  # fmt: skip
    print(common.table(["figure", "value", "floor", "ratio", "goal", "", ""], rows))


def plan(sizes: Sizes) -> dict[str, Any]:
    """What would be measured, as JSON: the figures with their goals and floors, the sizes."""
    return {
        "sizes": sizes.__dict__,
        "figures": [
            {"key": f.key, "name": f.name, "unit": f.unit, "goal": f.goal,
             "goal_text": f.goal_text(), "at_least": f.at_least, "on_ratio": f.on_ratio,
             "floor": f.floor}
            for f in FIGURES
        ],
        "parts": {name: list(keys) for name, keys, _ in PARTS},
    }  # fmt: skip


def main() -> int:
    """Measure every figure (or print the plan); exit 1 only when a measurement failed."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds per figure (at least 3)")
    p.add_argument("--json", type=Path, default=None, help="where to write the JSON report")
    p.add_argument("--plan", action="store_true", help="print what would be measured; no run")
    args = p.parse_args()
    sizes = Sizes.of(args.quick, max(3, args.rounds))
    if args.plan:
        print(json.dumps(plan(sizes), indent=2))
        return 0
    t0 = time.monotonic()
    info = common.machine(common.ROOT)
    info["bytecode_compiled"] = common.compile_package()
    results = measure(sizes, args.keep)
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    info["date_end"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    data = report(info, results, sizes)
    data["quick"], data["elapsed_s"] = args.quick, round(time.monotonic() - t0, 1)
    print_report(data, data["elapsed_s"], args.quick)
    path = args.json or common.RESULTS / f"check{'-quick' if args.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"results: {path}")
    return 1 if any(r.failed for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
