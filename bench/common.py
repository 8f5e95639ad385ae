"""Shared helpers of the benchmarks: the machine, results files, /proc readings, sd_notify.

Benchmarks are not tests: nothing here asserts on timings. Each benchmark prints its
figures and writes them, with a description of the machine, to `bench/results/<name>.json`.
Every wait is bounded; a daemon that does not stop in time is killed (by its own pid).
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
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/ first, not the repository
    sys.path.insert(0, str(ROOT))

PYTHON = sys.executable
DAEMON: tuple[str, ...] = (PYTHON, "-m", "autoloop_daemon")
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


def proc_status_kb(pid: int) -> dict[str, int]:
    """The `Vm*` and `Rss*` lines of /proc/<pid>/status in kB ({} once the process is gone)."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key.startswith(("Vm", "Rss")) and rest.strip().endswith("kB"):
            with contextlib.suppress(ValueError):
                out[key] = int(rest.split()[0])
    return out


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of `pid` itself (children excluded) in seconds, None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_cpu_detail_s(pid: int) -> dict[str, float]:
    """utime, stime (the process) and cutime, cstime (its reaped children) in seconds."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return {}
    fields = data[data.rfind(b")") + 2 :].split()
    names = ("utime", "stime", "cutime", "cstime")
    return {name: int(fields[11 + i]) / CLK_TCK for i, name in enumerate(names)}


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


# --- sd_notify --------------------------------------------------------------------------


@dataclass
class Notification:
    """One datagram the daemon sent to $NOTIFY_SOCKET."""

    at: float  # time.monotonic() on arrival
    wall: float  # time.time() on arrival
    fields: dict[str, str]


@dataclass
class NotifyListener:
    """A NOTIFY_SOCKET of our own: a thread records every datagram with its arrival time."""

    path: Path
    messages: list[Notification] = field(default_factory=list)
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _closed: bool = False

    def __enter__(self) -> NotifyListener:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(str(self.path))
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._receive, name="notify", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _receive(self) -> None:
        assert self._sock is not None
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            at, wall = time.monotonic(), time.time()
            fields = {}
            for line in data.decode("utf-8", "replace").splitlines():
                key, _, value = line.partition("=")
                fields[key] = value
            with self._cond:
                self.messages.append(Notification(at, wall, fields))
                self._cond.notify_all()

    @property
    def env(self) -> dict[str, str]:
        """The variable to give the daemon."""
        return {"NOTIFY_SOCKET": str(self.path)}

    def clear(self) -> None:
        """Forget what was received so far."""
        with self._cond:
            self.messages.clear()

    def wait_ready(self, timeout_s: float, out: Path) -> Notification:
        """The READY=1 message; RuntimeError with the tail of the daemon's `out` if none comes."""
        ready = self.wait_for(is_ready, timeout_s=timeout_s)
        if ready is None:
            raise RuntimeError(f"no READY=1 within {timeout_s:g} s:\n{tail(out)}")
        return ready

    def wait_for(
        self, predicate: Callable[[Notification], bool], timeout_s: float
    ) -> Notification | None:
        """The first message (received so far or within `timeout_s`) matching `predicate`."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._cond:
            while True:
                for message in self.messages[seen:]:
                    if predicate(message):
                        return message
                seen = len(self.messages)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def last_status(self) -> str | None:
        """The newest STATUS= text."""
        with self._cond:
            for message in reversed(self.messages):
                if "STATUS" in message.fields:
                    return message.fields["STATUS"]
        return None


def status_counts(text: str | None) -> dict[str, int]:
    """'3 running, 5 cooling down, 0 waiting, 2 stopped; ...' -> {'running': 3, ...}."""
    counts: dict[str, int] = {}
    if not text:
        return counts
    for part in text.split(";", 1)[0].split(","):
        words = part.split()
        if len(words) >= 2 and words[0].isdigit():
            counts[" ".join(words[1:])] = int(words[0])
    return counts


def is_ready(message: Notification) -> bool:
    """The READY=1 datagram."""
    return message.fields.get("READY") == "1"


def all_cooling(n: int) -> Callable[[Notification], bool]:
    """A STATUS= datagram saying that `n` targets are cooling down."""

    def check(message: Notification) -> bool:
        return status_counts(message.fields.get("STATUS")).get("cooling down", -1) >= n

    return check


# --- running the daemon ----------------------------------------------------------------


def start_daemon(
    args: Sequence[str], *, env: Mapping[str, str], stdout: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    """Start `autoloopd ARGS` with its stdout and stderr in the file `stdout`."""
    full_env = dict(os.environ)
    full_env.update(env)
    full_env.pop("AUTOLOOPD_RUN", None)
    with open(stdout, "ab") as out:
        return subprocess.Popen(
            [*DAEMON, *args],
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_daemon(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[float | None, int]:
    """SIGTERM, then wait up to `timeout_s`: (seconds to exit or None, exit code).

    A daemon still running after the timeout is killed (SIGKILL to its pid) and None is
    returned for the time.
    """
    if proc.poll() is not None:
        return 0.0, proc.returncode
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None, proc.wait(timeout=30)
    return time.monotonic() - t0, code


def kill_daemon(proc: subprocess.Popen[bytes]) -> None:
    """Make sure the daemon we started is gone (SIGKILL to its pid)."""
    if proc.poll() is None:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)


def read_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines the daemon printed (other lines are skipped)."""
    events = []
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
    return events


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- configuration --------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def daemon_table(work: Path) -> dict[str, Any]:
    """The `[daemon]` table the scale and start/stop benchmarks share (32 concurrent, JSON logs)."""
    return {
        "state_dir": work / "state",
        "max_concurrent_iterations": 32,
        "shutdown_grace_seconds": 30,
        "log_format": "json",
        "log_level": "info",
    }


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


def write_config(
    path: Path,
    *,
    daemon: Mapping[str, Any],
    budget: Mapping[str, Any],
    defaults: Mapping[str, Any],
    targets: Sequence[tuple[str, Path]],
) -> Path:
    """Write a daemon config: sections, then one [[targets]] per (name, path)."""
    out = []
    for section, values in (("daemon", daemon), ("budget", budget), ("defaults", defaults)):
        out.append(f"[{section}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        out.append("")
    for name, target_path in targets:
        out += ["[[targets]]", f"name = {_toml_value(name)}", f"path = {_toml_value(target_path)}"]
    path.write_text("\n".join(out) + "\n")
    return path


def make_targets(base: Path, n: int) -> list[tuple[str, Path]]:
    """`n` empty target directories under `base/targets`: [(name, path)]."""
    names = [f"t{i:05d}" for i in range(n)]
    root = base / "targets"
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).mkdir(exist_ok=True)
    return [(name, root / name) for name in names]


# --- invariants after a run -------------------------------------------------------------


@dataclass
class Audit:
    """What the files of many state roots say, after the daemon has exited."""

    targets: int = 0
    log_lines: int = 0
    completed: int = 0
    failed: int = 0
    interrupted: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    per_target_completed: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        per = self.per_target_completed
        return {
            "targets": self.targets,
            "log_lines": self.log_lines,
            "completed": self.completed,
            "failed": self.failed,
            "interrupted": self.interrupted,
            "statuses": self.statuses,
            "per_target_completed_min": min(per) if per else None,
            "per_target_completed_max": max(per) if per else None,
            "problems": self.problems[:20],
            "problem_count": len(self.problems),
        }


def audit_state_roots(roots: Iterable[Path], allowed_status: Iterable[str] | None = None) -> Audit:
    """Check DESIGN.md's invariants in every state root.

    The state parses; the log numbers its iterations 1..n (`read_log` refuses otherwise) with
    no torn tail; total_cost_usd equals the sum of the logged costs; iterations_completed
    equals the number of completed lines; no iteration is left in flight.
    """
    from autoloop_daemon.storage.files import artifacts
    from autoloop_daemon.storage.files import state_file as state_mod

    allowed = set(allowed_status) if allowed_status is not None else None
    audit = Audit()
    for root in roots:
        audit.targets += 1
        try:
            state = state_mod.load_state(state_mod.state_path(root))
            entries, torn = artifacts.read_log(artifacts.log_path(root), repair=False)
        except Exception as exc:  # a corrupt file is a finding, not a crash of the bench
            audit.problems.append(f"{root.name}: {exc}")
            continue
        if state is None:
            audit.problems.append(f"{root.name}: no state file")
            continue
        if torn:
            audit.problems.append(f"{root.name}: torn log tail ({torn} bytes)")
        done = sum(1 for e in entries if e.completed)
        audit.log_lines += len(entries)
        audit.completed += done
        audit.failed += sum(1 for e in entries if e.status == "failed")
        audit.interrupted += sum(1 for e in entries if e.status == "interrupted")
        audit.per_target_completed.append(done)
        status = str(state.get("status"))
        audit.statuses[status] = audit.statuses.get(status, 0) + 1
        if allowed is not None and status not in allowed:
            audit.problems.append(f"{root.name}: status {status}")
        cost = math.fsum(e.cost_usd for e in entries)
        if abs(float(state["total_cost_usd"]) - cost) > 1e-6:
            audit.problems.append(
                f"{root.name}: total_cost_usd {state['total_cost_usd']} != logged {cost}"
            )
        if state["iterations_completed"] != done:
            audit.problems.append(
                f"{root.name}: iterations_completed {state['iterations_completed']} != {done}"
            )
        if state.get("in_flight") is not None:
            audit.problems.append(f"{root.name}: in_flight left set: {state['in_flight']}")
    return audit


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
