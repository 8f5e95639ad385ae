"""Memory kept per iteration while the control API is polled (issue 19), measured in-process.

The daemon's parts as `autoloopd --config` wires them (cli/run.py, cli/serve.py): a
`Supervisor` on the files backend with `LocalHosting`, the journal, the metrics and the
systemd reporter subscribed, and the `ControlServer` on a real unix socket -- without the
process-wide parts (signal handlers, subreaper, death watch), which a test process must not
take. Its targets run `echo` as their orchestrator (a real process per run, no cooldown).
A client in a separate process (so its own allocations are not traced) polls
`GET /api/status` and `GET /api/targets/<name>/history` over the socket the whole time.

tracemalloc traces from the start (started later, the objects of bounded buffers allocated
before it are replaced by traced ones and read as growth). After a warm-up a snapshot is
taken, after many more iterations another, both while the targets iterate and the client
polls; the growth between them is divided by the iterations recorded in between, counted
from the targets' iteration logs. Shared by
tests/test_memory.py (the bound) and bench/growth.py --memory (the figure).
"""

from __future__ import annotations

import gc
import os
import shutil
import statistics
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio

from autoloop_daemon.control.server import ControlServer
from autoloop_daemon.control.settings import ControlSettings
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.hosting import LocalHosting
from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.observers.journal import journal
from autoloop_daemon.observers.logs import configure_logging
from autoloop_daemon.observers.metrics import Metrics
from autoloop_daemon.observers.sdnotify import Notifier
from autoloop_daemon.observers.systemd import SystemdReporter
from autoloop_daemon.storage.files import artifacts
from autoloop_daemon.storage.files.store import FileStorage

# Frames kept per allocation: 1 by default (each more frame slows the traced daemon; at 8
# it runs ~2.5x slower); AUTOLOOPD_MEMORY_FRAMES=8 for where a growth comes from.
FRAMES = int(os.environ.get("AUTOLOOPD_MEMORY_FRAMES", "1"))
IGNORED = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
    # coverage (the suite runs under --cov) keeps its own per-run data: not the daemon's
    tracemalloc.Filter(False, "*/coverage/*"),
)

# The slope leaves out single blocks of this size or more: in the 2,400 iterations measured
# nothing of the daemon's grows to that in one block (a target's scores, the one array that
# grows per iteration, reach ~10 kB), while the interpreter's table of interned strings,
# one block of 0.96 MB, is resized to 1.9 MB at a random moment of some rounds (pathlib
# interns every path component, and each run's temp and log names are new ones): that
# one-off step, landing mid-round, took the median slope from ~15 B to 87 B. Both sizes of
# the table are left out, so its resize is no step at all.
ONE_OFF_BLOCK = 512 * 1024

# A real run per iteration, as cheap as one can be: `/bin/echo <result line>` (braces doubled:
# an orchestrator template). The simulator would be cheaper still, but its decision looks
# back over every earlier iteration (quadratic over thousands).
ORCHESTRATOR = (
    shutil.which("echo") or "/bin/echo",
    '{{"decision":"keep","scores":{{"a":0.5}},"cost_usd":0.0001}}',
)

# The poller: the status, and every tenth request a target's history (which reads the whole
# log, so that polling does not starve the targets), a new connection per request
# (as `curl` in a loop does). It stops between two requests on "pause" (answering "paused")
# until "go", so that no request is half-served in a snapshot; on end of input it prints
# how many it got answered.
POLLER = r"""
import socket, sys
path, names = sys.argv[1], sys.argv[2].split(",")
answered = i = 0
def ask(route):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(f"GET {route} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply.startswith(b"HTTP/1.1 200")
import selectors
sel = selectors.DefaultSelector()
sel.register(sys.stdin, selectors.EVENT_READ)
while True:
    if sel.select(0):
        word = sys.stdin.readline().strip()
        if word != "pause":
            break
        print("paused", flush=True)
        if sys.stdin.readline().strip() != "go":
            break
    route = f"/api/targets/{names[i // 10 % len(names)]}/history" if i % 10 == 9 else "/api/status"
    i += 1
    answered += ask(route)
print(answered, i, flush=True)
"""


@dataclass(frozen=True, slots=True)
class Growth:
    """What the daemon kept between the two snapshots, per recorded iteration."""

    iterations: int  # recorded between the first and the last snapshot (from the logs)
    grown_bytes: int  # traced memory at the last snapshot minus at the first
    requests: int  # answered with 200 over the whole run
    top: tuple[str, ...]  # the largest growing allocation sites, for a failure message
    points: tuple[tuple[int, int], ...] = ()  # (iterations recorded, traced bytes) per snapshot

    @property
    def bytes_per_iteration(self) -> float:
        """`grown_bytes` / `iterations`."""
        return self.grown_bytes / max(self.iterations, 1)

    @property
    def slope_bytes_per_iteration(self) -> float:
        """The growth per iteration across every snapshot: the median of the slopes between
        each pair of snapshots (Theil-Sen). What bounded buffers hold at one snapshot and not
        at the next (an idle worker's last arguments, a full history's turnover: several kB
        either way) averages out of it where a difference of two snapshots takes it whole. The
        points leave out blocks of ONE_OFF_BLOCK or more (the interpreter's table of interned
        strings, whose one-off resize to 1.9 MB is not growth per iteration)."""
        pairs = [
            (y1 - y0) / (x1 - x0)
            for i, (x0, y0) in enumerate(self.points)
            for x1, y1 in self.points[i + 1 :]
            if x1 != x0
        ]
        return statistics.median(pairs) if pairs else self.bytes_per_iteration


def target_specs(work: Path, targets: int) -> list[TargetSpec]:
    """Targets iterating back to back, with no stop condition they could reach."""
    specs = []
    for i in range(targets):
        name = f"m{i}"
        path = work / "skills" / name
        path.mkdir(parents=True)
        specs.append(
            TargetSpec(
                name=name, path=path, state_root=work / "state" / name, mode="continuous",
                max_iterations=1_000_000, max_cost_usd=1e6, plateau_window=0,
                oscillation_window=0, cooldown_minutes=0.0, orchestrator=ORCHESTRATOR,
                handoff_arg=None,
            )
        )  # fmt: skip
    return specs


def recorded(specs: list[TargetSpec]) -> int:
    """Iterations recorded in the targets' logs (the real records, not an event count): one
    line each. Counted without parsing them, so that nothing of the count outlives it."""
    return sum(artifacts.log_path(s.state_root).read_bytes().count(b"\n") for s in specs)


def _snapshot() -> tracemalloc.Snapshot:
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces(IGNORED)


class _Milestones:
    """Counts finished iterations; `snapshot()` takes a snapshot synchronously inside the
    publication of the next `IterationFinished` after which no target has a run in flight
    (so that no other task runs between the count of the records and the snapshot, and no
    run's buffers, environment or pending write sit in one snapshot and not the other)."""

    def __init__(self, specs: list[TargetSpec]) -> None:
        self._specs = specs
        self.finished = 0
        self._reached: tuple[int, anyio.Event] | None = None
        self._armed: list[tuple[int, tracemalloc.Snapshot]] | None = None
        self._taken = anyio.Event()
        self._running: set[str] = set()

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.IterationStarted):
            self._running.add(event.target)
        if not isinstance(event, ev.IterationFinished):
            return
        self._running.discard(event.target)
        self.finished += 1
        if self._reached is not None and self.finished >= self._reached[0]:
            self._reached[1].set()
        if self._armed is not None and not self._running:
            self._armed.append((recorded(self._specs), _snapshot()))
            self._armed = None
            self._taken.set()

    async def reach(self, at: int) -> None:
        """Return once `at` iterations have finished."""
        self._reached = (at, anyio.Event())
        if self.finished < at:
            await self._reached[1].wait()

    async def snapshot(self) -> tuple[int, tracemalloc.Snapshot]:
        """(iterations recorded, snapshot) at the next finished iteration."""
        taken: list[tuple[int, tracemalloc.Snapshot]] = []
        self._armed, self._taken = taken, anyio.Event()
        await self._taken.wait()
        return taken[0]


async def measure(
    work: Path, *, targets: int, warm_up: int, between: int, snapshots: int = 2
) -> Growth:
    """Run `targets` targets under a polling client (tracemalloc on from the start): after
    `warm_up` iterations a snapshot, then `snapshots - 1` more evenly over `between` more."""
    specs = target_specs(work, targets)
    events = ev.EventBus()
    sup = Supervisor(
        specs, storage=FileStorage(work / "state"), budget_cap_usd=1e6,
        max_concurrent=targets, grace_s=5.0, hosting=LocalHosting(), events=events,
        stay_up=True,
    )  # fmt: skip
    metrics = Metrics(sup.snapshot)
    milestones = _Milestones(specs)
    for subscriber in (journal, metrics, SystemdReporter(sup, Notifier({})), milestones):
        events.subscribe(subscriber)
    sock = work / "control.sock"
    server = ControlServer(sup, metrics, ControlSettings(socket_path=sock))
    tracemalloc.start(FRAMES)
    _snapshot()  # filtering compiles the filters' patterns once (fnmatch's cache): not growth
    try:
        async with anyio.create_task_group() as tg:
            poller = await _start_poller_after(tg, sup, server, sock, specs)
            try:
                taken = []
                steps = max(1, snapshots - 1)
                for at in (warm_up + between * k // steps for k in range(steps + 1)):
                    await milestones.reach(at)
                    await anyio.to_thread.run_sync(_pause, poller)
                    taken.append(await milestones.snapshot())
                    await anyio.to_thread.run_sync(_go, poller)
                answered, _ = await anyio.to_thread.run_sync(_stop_poller, poller)
                sup.request_shutdown("measured")
            finally:
                if poller.poll() is None:
                    poller.kill()
                    poller.wait()
    finally:
        tracemalloc.stop()
    points = tuple((at, _traced_bytes(snap)) for at, snap in taken)
    (first_at, first), (second_at, second) = taken[0], taken[-1]
    stats = second.compare_to(first, "traceback")
    grown = sum(s.size_diff for s in stats)
    return Growth(
        second_at - first_at,
        grown,
        answered,
        tuple(_describe(s) for s in stats[:8]),
        points,
    )


def _traced_bytes(snap: tracemalloc.Snapshot) -> int:
    """The snapshot's traced bytes, leaving out single blocks of ONE_OFF_BLOCK or more."""
    return sum(t.size for t in snap.traces if t.size < ONE_OFF_BLOCK)


async def _start_poller_after(
    tg: anyio.abc.TaskGroup,
    sup: Supervisor,
    server: ControlServer,
    sock: Path,
    specs: list[TargetSpec],
) -> subprocess.Popen[str]:
    """The supervisor running (its control server listening), then the poller started."""
    listening = anyio.Event()

    async def bind() -> None:
        await tg.start(server.run)
        listening.set()

    async def run() -> None:
        try:
            await sup.run(bind)
        finally:
            await server.close()

    tg.start_soon(run)
    await listening.wait()
    names = ",".join(s.name for s in specs)
    argv = [sys.executable, "-c", POLLER, str(sock), names]
    spawn = partial(subprocess.Popen, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return await anyio.to_thread.run_sync(partial(spawn, text=True))


def _pause(poller: subprocess.Popen[str]) -> None:
    assert poller.stdin is not None and poller.stdout is not None
    poller.stdin.write("pause\n")
    poller.stdin.flush()
    if poller.stdout.readline().strip() != "paused":
        raise RuntimeError("the poller did not pause")


def _go(poller: subprocess.Popen[str]) -> None:
    assert poller.stdin is not None
    poller.stdin.write("go\n")
    poller.stdin.flush()


def _stop_poller(poller: subprocess.Popen[str]) -> tuple[int, int]:
    out, _ = poller.communicate(timeout=30)
    answered, sent = out.split()
    return int(answered), int(sent)


def _describe(stat: tracemalloc.StatisticDiff) -> str:
    newest_first = list(reversed(list(stat.traceback)))[:8]  # where it was allocated, first
    frames = " <- ".join(f"{f.filename}:{f.lineno}" for f in newest_first)
    return f"{stat.size_diff:+d} B in {stat.count_diff:+d} blocks: {frames}"


def run_quietly(
    work: Path, *, targets: int, warm_up: int, between: int, snapshots: int = 2
) -> Growth:
    """`measure` with the daemon's JSON logging rendered into /dev/null (as the daemon
    renders it into the journal), outside any event loop."""
    with open(os.devnull, "w") as devnull:
        configure_logging("json", "info", stream=devnull, cache=False)
        try:
            return anyio.run(
                partial(
                    measure, work, targets=targets, warm_up=warm_up, between=between,
                    snapshots=snapshots,
                )
            )  # fmt: skip
        finally:
            configure_logging("json", "info", cache=False)
