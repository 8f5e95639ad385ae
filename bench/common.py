"""Shared helpers of the benchmarks: the machine, results files, /proc readings, the configs.

Benchmarks are not tests: nothing here asserts on timings. Each benchmark prints its
figures and writes them, with a description of the machine, to `bench/results/<name>.json`.
Every wait is bounded; a daemon that does not stop in time is killed (by its own pid).

Running the daemon, its config file, the notify socket, its JSON log and the invariant audit
come from tests/helpers/, the same code the tests use (`import common` first: it puts the
repository on sys.path so that `tests.helpers` imports).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/ first, not the repository
    sys.path.insert(0, str(ROOT))

from tests.helpers.config import write_config  # noqa: E402 (needs the repository on sys.path)
from tests.helpers.daemon import Daemon  # noqa: E402
from tests.helpers.process import DidNotExit, proc_stat, status_json, stop  # noqa: E402

PYTHON = sys.executable
TRIVIAL_ORCHESTRATOR = BENCH / "trivial_orchestrator.py"
RESULT_JSON = '{"decision":"keep","scores":{"a":0.5},"cost_usd":0.0001}'
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Money and counts large enough never to stop a target, within the config's bounds.
NO_LIMIT_ITERATIONS = 1_000_000
NO_LIMIT_USD = 1_000_000.0


# --- orchestrators -------------------------------------------------------------------


def echo_argv() -> list[str]:
    """The most trivial orchestrator: `/bin/echo <result JSON>` (an argv, no shell)."""
    return [shutil.which("echo") or "/bin/echo", RESULT_JSON]


def python_argv() -> list[str]:
    """`<python> bench/trivial_orchestrator.py`: the same result after a Python start-up."""
    return [PYTHON, str(TRIVIAL_ORCHESTRATOR)]


def as_template(argv: Sequence[str]) -> list[str]:
    """`argv` as an orchestrator template: braces doubled so none reads as a placeholder."""
    return [part.replace("{", "{{").replace("}", "}}") for part in argv]


# --- the code as installed ---------------------------------------------------------------


def compile_package() -> bool:
    """Byte-compile the package's modules where bytecode is missing or stale (compileall
    skips the others); False when one could not be compiled.

    `pip install .` (the README's main job) compiles every module at install time; an
    editable install (the test command's) leaves it to the first import, which writes
    nothing under PYTHONDONTWRITEBYTECODE=1 (set in many containers, and on the machine
    these figures were taken on). Every daemon and `status` started would then compile
    the package again: ~0.2 s of each start-up that an installed daemon does not pay.
    """
    import compileall

    return bool(compileall.compile_dir(ROOT / "autoloop_daemon", quiet=2))


# --- the durability floor --------------------------------------------------------------

FLOOR_LOG_LINE = b'{"iteration":1,"status":"completed","decision":"keep"}'.ljust(300) + b"\n"
FLOOR_STATE_BYTES = b"{" + b" " * 10_700 + b"}\n"  # a state file is ~10.7 kB


def durability_iteration(argv: Sequence[str], directory: Path) -> None:
    """One iteration of the durability floor: spawn `argv` and read its output, append one
    line to `directory/log` with fsync, replace `directory/state` atomically (temp file,
    fsync, rename, directory fsync). The least one iteration's contract needs, with the
    daemon's own file primitives (`fsio`)."""
    from autoloop_daemon.storage.files import fsio

    subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=True, timeout=60)
    fsio.append_record(directory / "log", FLOOR_LOG_LINE)
    fsio.atomic_write_bytes(directory / "state", FLOOR_STATE_BYTES)


def durability_floor_block(argv: Sequence[str], n: int, directory: Path) -> list[float]:
    """Seconds per `durability_iteration`, n times, one after the other in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        durability_iteration(argv, directory)
        times.append(time.perf_counter() - t0)
    return times


# --- the machine and the results file --------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_mb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def _filesystem(path: Path) -> str:
    """The file system type and device that hold `path` (from /proc/mounts)."""
    best, kind = "", "unknown"
    target = str(path.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1]
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, kind = mount, f"{parts[2]} on {parts[0]} (mounted at {mount})"
    return kind


def machine(work_dir: Path | None = None) -> dict[str, Any]:
    """What the figures were measured on: `uname -m`, cores, Python, date, kernel, CPU."""
    info: dict[str, Any] = {
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "mem_total_mb": _mem_total_mb(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if work_dir is not None:
        info["work_dir_filesystem"] = _filesystem(work_dir)
    info["code_sha256"] = code_digest()
    with contextlib.suppress(Exception):
        info["git_dirty_files"] = subprocess.run(
            ["git", "status", "--porcelain", "--", "autoloop_daemon"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.count("\n")
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    return info


def code_digest() -> str:
    """The first 12 hex digits of a SHA-256 over autoloop_daemon/*.py: the code measured."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "autoloop_daemon").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def result_name(name: str, quick: bool) -> str:
    """`name`, or `name.quick` for a --quick run (so it never overwrites the full figures)."""
    return f"{name}.quick" if quick else name


def write_results(name: str, data: Mapping[str, Any]) -> Path:
    """Write `bench/results/<name>.json` (`<name>.quick.json` for --quick) atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{result_name(name, bool(data.get('quick')))}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def print_machine(info: Mapping[str, Any]) -> None:
    """One line describing the machine."""
    print(
        f"machine: {info['arch']}, {info['cores']} cores ({info['cpu']}), "
        f"Python {info['python']}, kernel {info['kernel']}, {info['date']}, "
        f"load average {info['loadavg_at_start']}"
    )
    print(
        f"code: git {info.get('git_commit', '?')} with {info.get('git_dirty_files', '?')} "
        f"changed file(s) in autoloop_daemon/, sha256 {info['code_sha256']}"
    )
    if "work_dir_filesystem" in info:
        print(f"work dir: {info['work_dir_filesystem']}")


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick and --keep."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short run (smoke test of the bench)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return p


@contextlib.contextmanager
def work_dir(name: str, keep: bool) -> Iterator[Path]:
    """A fresh temporary directory, removed afterwards unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix=f"autoloopd-bench-{name}-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


# --- statistics and printing -----------------------------------------------------------


def median(values: Sequence[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def min_median_max(values: Sequence[float], digits: int) -> str:
    """`min / median / max` of `values`, each with `digits` decimals."""
    spread = (min(values), statistics.median(values), max(values))
    return " / ".join(f"{v:.{digits}f}" for v in spread)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100, nearest rank), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def rnd(value: float | None, digits: int = 3) -> float | None:
    """`round` that lets None through."""
    return None if value is None else round(value, digits)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table with left-aligned columns."""
    text_rows = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in text_rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def goal(value: float | None, limit: float, *, below: bool = True) -> str:
    """'met' / 'MISSED' / 'n/a' for a figure against its goal (<= limit by default)."""
    if value is None:
        return "n/a"
    ok = value <= limit if below else value >= limit
    return "met" if ok else "MISSED"


# --- /proc ------------------------------------------------------------------------------


def proc_cpu_detail_s(pid: int) -> dict[str, float]:
    """utime, stime (the process) and cutime, cstime (its reaped children) in seconds."""
    fields = proc_stat(pid)
    if fields is None:
        return {}
    names = ("utime", "stime", "cutime", "cstime")
    return {name: int(fields[11 + i]) / CLK_TCK for i, name in enumerate(names)}


def wait_quiet(
    pid: int, window_s: float = 0.5, busy_s: float = 0.025, timeout_s: float = 60.0
) -> float:
    """Wait until process `pid` used less than `busy_s` of CPU over `window_s` (its own
    periodic work, a watchdog ping or a status line, stays under that); returns the seconds
    waited. At `timeout_s`, returns anyway. A daemon whose `status` already says every target
    cools down may still be starting their tasks, and a signal sent then waits for that work
    (once at 10,000 targets: a SIGTERM handled 1.3 s late)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        before = proc_cpu_detail_s(pid)
        time.sleep(window_s)
        after = proc_cpu_detail_s(pid)
        if not before or not after:
            break  # gone
        used = sum(after[k] - before[k] for k in ("utime", "stime"))
        if used < busy_s:
            break
    return time.monotonic() - t0


def system_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (/proc/stat)."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


def proc_threads(pid: int) -> int | None:
    """The number of threads of `pid`."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


def proc_fds(pid: int) -> int | None:
    """The number of open file descriptors of `pid`."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def raise_nofile_limit(wanted: int) -> tuple[int, int]:
    """Raise our soft RLIMIT_NOFILE (inherited by the daemon) towards `wanted`; returns it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --- running the daemon ----------------------------------------------------------------


def stop_daemon(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[float | None, int]:
    """SIGTERM, then wait up to `timeout_s`: (seconds to exit or None, exit code).

    A daemon still running after the timeout is killed (SIGKILL to its pid) and None is
    returned for the time.
    """
    if proc.poll() is not None:
        return 0.0, proc.returncode
    t0 = time.monotonic()
    try:
        code = stop(proc, timeout=timeout_s)
    except DidNotExit:
        return None, proc.returncode
    return time.monotonic() - t0, code


def wait_all_status(
    daemon: Daemon, wanted: str, n: int, timeout_s: float, interval_s: float = 0.5
) -> float:
    """Poll `autoloopd status --json` until all `n` targets have status `wanted`; returns
    time.monotonic() when that was seen. RuntimeError (with the daemon's last lines) when the
    daemon exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = status_json(daemon.config)
        if len(rows) == n and all(r.get("status") == wanted for r in rows):
            return time.monotonic()
        if daemon.proc.poll() is not None or time.monotonic() > deadline:
            counts = Counter(str(r.get("status")) for r in rows)
            raise RuntimeError(f"not all {wanted}: {dict(counts)}\n{tail(daemon.out)}")
        time.sleep(interval_s)


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- configuration --------------------------------------------------------------------


def daemon_table(work: Path) -> dict[str, Any]:
    """The `[daemon]` table the scale and start/stop benchmarks share (32 concurrent, JSON logs)."""
    return {
        "state_dir": work / "state",
        "max_concurrent_iterations": 32,
        "shutdown_grace_seconds": 30,
        "log_format": "json",
        "log_level": "info",
    }


def idle_config(work: Path, n: int) -> Path:
    """`work/config.toml` for `n` idle targets (`idle_defaults`) with the shared `[daemon]`."""
    return write_config(
        work / "config.toml",
        daemon=daemon_table(work),
        budget={"max_cost_usd": 100_000_000.0},
        defaults=idle_defaults(),
        targets=make_targets(work, n),
    )


def idle_defaults() -> dict[str, Any]:
    """`[defaults]` for targets that run one instant simulated iteration, then cool down 10 h."""
    return {
        "mode": "continuous",
        "dry_run": True,
        "simulated_seconds": 0.0,
        "max_iterations": 1000,
        "max_cost_usd": NO_LIMIT_USD,
        "cooldown_minutes": 600,
        "estimated_cost_usd": 0.5,
    }


def make_targets(base: Path, n: int) -> list[dict[str, Any]]:
    """`n` empty target directories under `base/targets`: their `[[targets]]` tables."""
    root = base / "targets"
    root.mkdir(parents=True, exist_ok=True)
    targets = []
    for i in range(n):
        name = f"t{i:05d}"
        (root / name).mkdir(exist_ok=True)
        targets.append({"name": name, "path": root / name})
    return targets


# --- plotting (optional) ----------------------------------------------------------------


def pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_plot(plt: Any, fig: Any, name: str, quick: bool) -> Path:
    """Lay out `fig`, write it to `bench/results/<name>[.quick].png` and close it."""
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{result_name(name, quick)}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
