"""The floors of bench/check.py's figures: what plain Python pays for the same work here.

Each floor does the least that its figure's work needs, with nothing of autoloopd in the
way, so that a figure's ratio to it says how much the daemon adds (bench/check.py's
docstring says which floor goes with which figure, and why).
"""

from __future__ import annotations

import asyncio
import fcntl
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import common  # first: puts the repository on sys.path

CONCURRENCY = 32
STATE_FILE, LOG_FILE, LOCK_FILE = "autoloop_state.json", "iteration_log.jsonl", ".autoloopd.lock"


def asyncio_cpu_floor_ms(n: int) -> float:
    """CPU ms of this process per run: asyncio spawns echo `n` times, 32 at a time, reads
    its output and makes one `asyncio.to_thread` hand-off per run."""
    argv = common.echo_argv()

    async def one(gate: asyncio.Semaphore) -> None:
        async with gate:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            await proc.communicate()
            await asyncio.to_thread(len, argv)

    async def all_runs() -> None:
        gate = asyncio.Semaphore(CONCURRENCY)
        await asyncio.gather(*(one(gate) for _ in range(n)))

    cpu0 = time.process_time()
    asyncio.run(all_runs())
    return 1e3 * (time.process_time() - cpu0) / n


def threaded_rate_floor(n: int, directory: Path) -> float:
    """Iterations per second of 32 threads sharing `n` durability iterations (each thread
    writes its own log and state files)."""
    left = [n]
    lock = threading.Lock()

    def worker(k: int) -> None:
        own = directory / f"thread-{k}"
        own.mkdir(parents=True, exist_ok=True)
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            common.durability_iteration(common.echo_argv(), own)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(CONCURRENCY)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - t0)


IMPORT_ALL = """
import importlib, pkgutil, autoloop_daemon
for m in pkgutil.walk_packages(autoloop_daemon.__path__, "autoloop_daemon."):
    if not m.name.endswith("__main__") and "postgres" not in m.name:
        importlib.import_module(m.name)
print(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""


def import_floors_mb(n: int) -> list[float]:
    """Peak RSS (MB) of `n` interpreters, each of which imported every module of the package
    (all but `__main__` and the PostgreSQL backend); run side by side (memory does not
    depend on the machine's load)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", IMPORT_ALL], stdout=subprocess.PIPE, text=True, cwd=common.ROOT
        )
        for _ in range(n)
    ]
    peaks = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"the import floor exited {proc.returncode}")
        peaks.append(int(out.strip()) / 1024)
    return peaks


class _UnixHTTP(http.client.HTTPConnection):
    """HTTP over a unix socket (the control API's transport)."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=60)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.unix_path))


def http_get(sock: Path, url: str) -> bytes:
    """The body of GET `url` on the unix socket `sock`."""
    conn = _UnixHTTP(sock)
    try:
        conn.request("GET", url)
        return conn.getresponse().read()
    finally:
        conn.close()


def lock_and_read_floor(roots: Sequence[Path]) -> float:
    """Seconds to take each state root's lock (flock, as the daemon does) and read its state
    file and log, one root after the other; each lock is released at once."""
    t0 = time.perf_counter()
    for root in roots:
        fd = os.open(root / LOCK_FILE, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            (root / STATE_FILE).read_bytes()
            (root / LOG_FILE).read_bytes()
        finally:
            os.close(fd)
    return time.perf_counter() - t0
