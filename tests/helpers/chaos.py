"""Chaos on a cluster: three real `autoloopd` hosts on one database running the recording
fake orchestrator (tests/fakes/chaos_orchestrator.py); a host crashed (SIGKILL) or frozen
(SIGSTOP, later SIGCONT) together with every process it started, or the database restarted
under them (a private server: tests/helpers/private_pg.py). `play` runs one scenario to the
end (every host exited) and returns what happened, for the checks and figures of
tests/helpers/chaos_checks.py; the tests (tests/test_cluster_chaos.py) and the benchmark
(bench/chaos.py) share it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tests.helpers.chaos_record import Run, read_runs
from tests.helpers.cluster_lab import ClusterLab
from tests.helpers.fakes import fake
from tests.helpers.private_pg import PrivatePostgres
from tests.helpers.process import marked_processes, proc_stat
from tests.helpers.wait import WaitTimeout, wait_for

LEASE_S = 3.0
RENEW_S = 0.5
TERM_GRACE_S = 0.5
COST_PER_MINUTE_USD = 6.0  # 0.1 $/s: what a takeover charges per second of a dead host's run
HOSTS = ("h1", "h2", "h3")
VICTIM = "h2"
SCENARIOS = ("crash", "crash_alone", "freeze", "freeze_in_transaction", "db_restart")


def overlap_margin_s(lease_s: float = LEASE_S, term_grace_s: float = TERM_GRACE_S) -> float:
    """How long a frozen host's run may still run beside the run of the host that took its
    lease over, once it is thawed (docs/design.md "Cluster mode"): the lease less the renew
    deadline (lease / 2), plus the termination grace."""
    deadline_s = lease_s / 2
    return lease_s - deadline_s + term_grace_s


@dataclass
class Outcome:
    """What a scenario did: its moments (monotonic seconds), the victim's targets at the
    event and when their leases moved, the hosts' exit codes, and the recorded runs."""

    scenario: str
    victim: str | None
    event_at: float = 0.0  # the crash, the freeze, the database stop
    resumed_at: float | None = None  # the thaw, the database start
    victim_targets: tuple[str, ...] = ()
    moved_after_s: dict[str, float] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    frozen_runs: int = 0  # orchestrator runs caught in flight by the crash or freeze

    @property
    def killed_at(self) -> dict[str, float]:
        """When each crashed host died (its runs without an end line ended then)."""
        if self.victim is None:
            return {}
        if self.scenario == "crash_alone" and self.resumed_at is not None:
            return {self.victim: self.resumed_at}  # its runs died when the watch killed them
        return {self.victim: self.event_at} if self.scenario == "crash" else {}


class ChaosLab(ClusterLab):
    """A cluster lab whose targets run the recording fake (see the module docstring)."""

    def __init__(self, root: Path, dsn: str, *, targets: int = 6, iterations: int = 6) -> None:
        """Six targets of six iterations by default; nothing runs until `start_hosts`."""
        super().__init__(root, dsn, lease_s=LEASE_S, renew_s=RENEW_S)
        self.names = [f"t{i}" for i in range(targets)]
        self.iterations = iterations
        self.record = root / "runs.jsonl"
        self.frozen: set[int] = set()

    def write_targets(self, cap_usd: float = 100.0) -> None:
        """The config: each target's runs sleep 0.3 to 0.55 s and report 0.05 to 0.1 $; a
        run's reservation is 0.2 $ until it has a cost history (the first estimate would
        otherwise be ten minutes of wall time, 60 $: a few of those fill the cap, which is
        not what these tests are about)."""
        targets = [
            {
                "name": name,
                "path": str(self.skill(name)),
                "orchestrator": [
                    sys.executable, fake("chaos_orchestrator.py"), "--record", str(self.record),
                    "--target", "{target}", "--iteration", "{iteration}",
                    "--sleep", str(0.3 + 0.05 * (i % 6)), "--cost", str(0.05 + 0.01 * (i % 6)),
                ],
                "sources": [],
                "max_iterations": self.iterations,
                "cooldown_minutes": 0,
                "plateau_window": 0,
                "oscillation_window": 0,
                "term_grace_seconds": TERM_GRACE_S,
                "cost_per_minute_usd": COST_PER_MINUTE_USD,
                "estimated_cost_usd": 0.2,
            }
            for i, name in enumerate(self.names)
        ]  # fmt: skip
        self.write(targets, budget={"max_cost_usd": cap_usd})

    def start_hosts(self) -> None:
        """Start every host at once (libpq names each host's sessions after it)."""
        for host in HOSTS:
            self.start(host, env={"PGAPPNAME": f"autoloopd-{host}"})

    def runs(self) -> list[Run]:
        """The runs recorded so far."""
        return read_runs(self.record)

    # ------------------------------------------------------------- a host's processes

    def processes_of(self, host: str) -> set[int]:
        """The host's daemon, its descendants, and every process carrying one of its run
        markers (its state roots are under its own state dir)."""
        root = self.daemons[host].pid
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (stat := proc_stat(int(entry.name))) is not None:
                children.setdefault(int(stat[1]), []).append(int(entry.name))
        found, todo = {root}, [root]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found | set(marked_processes(f"{self.state_dir(host)}/"))

    def freeze(self, host: str) -> set[int]:
        """SIGSTOP the host's daemon and wait until it has stopped (it starts nothing more;
        a child it is spawning has exec'd: the spawn is a vfork, and a child stopped before
        its exec would keep the parent from ever stopping), then every process it started,
        until a scan finds none left running; the frozen pids."""
        frozen = {self.daemons[host].pid}
        fresh = set(frozen)
        while fresh:
            for pid in sorted(fresh):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            self.frozen |= fresh
            wait_for(partial(_all_stopped, sorted(fresh)), timeout=10, interval=0.005,
                     what=f"{host}'s processes to stop")  # fmt: skip
            fresh = self.processes_of(host) - frozen
            frozen |= fresh
        return frozen

    def thaw(self, pids: set[int]) -> None:
        """SIGCONT `pids`."""
        for pid in sorted(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen -= pids

    def stop_all(self) -> None:
        """Thaw what is still frozen, then stop every host still running."""
        self.thaw(set(self.frozen))
        super().stop_all()

    # ------------------------------------------------------------- waiting on the cluster

    def open_runs(self, host: str) -> list[Run]:
        """The host's runs in flight (started, not ended)."""
        return [r for r in self.runs() if r.host == host and r.end is None]

    def wait_all_hosts_working(self, victim: str | None, timeout: float = 40.0) -> None:
        """Every host has had an iteration recorded, and `victim` (if any) holds a lease."""

        def working() -> bool:
            hosts = {h for (h,) in self.sql("SELECT DISTINCT host FROM iterations")}
            if not hosts >= set(HOSTS):
                return False
            return victim is None or bool(self.leases_of(victim))

        wait_for(working, timeout=timeout, interval=0.05, what="every host recording iterations")

    def leases_of(self, host: str) -> list[str]:
        """The targets whose live lease `host` holds."""
        rows = self.sql(
            "SELECT name FROM targets WHERE lease_holder = %s AND lease_expires_at > now() "
            "ORDER BY name",
            (host,),
        )
        return [name for (name,) in rows]

    def catch_in_flight(self, host: str, timeout: float = 30.0) -> set[int]:
        """Freeze `host` at a moment when one of its orchestrator runs is in flight (thawed
        and tried again when the freeze caught none); the frozen pids."""
        deadline = time.monotonic() + timeout
        while True:
            wait_for(lambda: self.open_runs(host), timeout=max(1.0, deadline - time.monotonic()),
                     interval=0.01, what=f"a run in flight on {host}")  # fmt: skip
            pids = self.freeze(host)
            if {r.pid for r in self.open_runs(host)} & pids:
                return pids
            self.thaw(pids)

    def catch_in_transaction(self, host: str, attempts: int = 500) -> set[int]:
        """Freeze `host` at a moment when one of its database sessions is inside a
        transaction holding the budget row's lock (thawed and tried again until then); the
        frozen pids."""
        for _ in range(attempts):
            pids = self.freeze(host)
            try:
                (settled,) = wait_for(
                    lambda: self._settled_sessions(host),
                    timeout=10,
                    interval=0.005,
                    what=f"{host}'s sessions to stop",
                )
            except WaitTimeout:  # a statement still running for the frozen host: another try
                settled = []
            if any(state == "idle in transaction" and "budgets" in locks
                   for state, locks in settled):  # fmt: skip
                return pids
            self.thaw(pids)
            wait_for(lambda: self.leases_of(host), timeout=20, interval=0.01,
                     what=f"{host} holding a lease")  # fmt: skip
        raise AssertionError(f"{host} was never frozen inside a transaction")

    def _settled_sessions(self, host: str) -> tuple[list[tuple[str, list[str]]]] | None:
        """`_sessions_of` in a tuple, so that a host with no session at all (an empty list)
        counts as settled for `wait_for` too."""
        sessions = self._sessions_of(host)
        return None if sessions is None else (sessions,)

    def _sessions_of(self, host: str) -> list[tuple[str, list[str]]] | None:
        """(state, locked relations) of each session of `host`; None while one is still
        running a statement (a frozen host's sessions end theirs, then idle)."""
        rows = self.sql(
            """SELECT a.state, array_remove(array_agg(DISTINCT l.relation::regclass::text), NULL)
               FROM pg_stat_activity a LEFT JOIN pg_locks l ON l.pid = a.pid AND l.granted
                    AND l.mode NOT IN ('AccessShareLock')
               WHERE a.application_name = %s GROUP BY a.pid, a.state""",
            (f"autoloopd-{host}",),
        )
        sessions = [(str(state), list(locks)) for state, locks in rows]
        return None if any(state == "active" for state, _ in sessions) else sessions

    def wait_moved(
        self, names: tuple[str, ...], victim: str, since: float, timeout: float = LEASE_S * 5 + 20
    ) -> dict[str, float]:
        """Wait until no target of `names` is `victim`'s any more (another host holds it, or
        it is finished); seconds from `since` until each was seen moved (polled)."""
        moved: dict[str, float] = {}

        def all_moved() -> bool:
            rows = self.sql(
                "SELECT name, lease_holder, finished_status FROM targets WHERE name = ANY(%s)",
                (list(names),),
            )
            now = time.monotonic()
            for name, holder, finished in rows:
                if name not in moved and (
                    finished is not None or (holder is not None and holder != victim)
                ):
                    moved[name] = now - since
            return len(moved) == len(names)

        try:
            wait_for(all_moved, timeout=timeout, interval=0.05,
                     what=f"the leases of {victim} to move")  # fmt: skip
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}\n{self.diagnosis()}") from None
        return moved

    def diagnosis(self) -> str:
        """The targets' rows and the database's sessions (who holds what, idle in a
        transaction since when): for the message of a wait that timed out."""
        targets = self.sql(
            "SELECT name, lease_holder, lease_expires_at - now(), fencing_token, "
            "finished_status FROM targets ORDER BY name"
        )
        sessions = self.sql(
            """SELECT a.pid, a.state, now() - a.xact_start, left(a.query, 120),
                      array_agg(DISTINCT l.relation::regclass::text)
               FROM pg_stat_activity a LEFT JOIN pg_locks l ON l.pid = a.pid
                    AND l.relation IS NOT NULL AND l.granted
               WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
               GROUP BY 1, 2, 3, 4 ORDER BY 3 DESC NULLS LAST"""
        )
        lines = ["targets:", *map(str, targets), "sessions:", *map(str, sessions)]
        return "\n".join(lines)

    def wait_rerun(self, names: tuple[str, ...], victim: str, since: float) -> None:
        """Wait until each of `names` has a run started by another host after `since`, or is
        finished."""

        def rerun() -> bool:
            started = {r.target for r in self.runs() if r.host != victim and r.start > since}
            finished = {n for (n,) in self.sql(
                "SELECT name FROM targets WHERE finished_status IS NOT NULL")}  # fmt: skip
            return set(names) <= started | finished

        wait_for(rerun, timeout=30, interval=0.05, what=f"{victim}'s targets to run elsewhere")

    def wait_exits(self, timeout: float = 90.0) -> dict[str, int]:
        """Every host's exit code (each must exit by itself within `timeout`)."""
        deadline = time.monotonic() + timeout
        return {
            host: daemon.wait(timeout=max(1.0, deadline - time.monotonic()))
            for host, daemon in self.daemons.items()
        }


def _all_stopped(pids: list[int]) -> bool:
    """Every pid is stopped (SIGSTOP took effect), a zombie or gone."""
    return all((s := proc_stat(pid)) is None or s[0] in ("T", "t", "Z", "X") for pid in pids)


# ------------------------------------------------------------------------- scenarios


def crash(lab: ChaosLab) -> Outcome:
    """kill -9 the victim host together with every process it started (a host crash), at
    a moment when it has a run in flight."""
    lab.wait_all_hosts_working(VICTIM)
    pids = lab.catch_in_flight(VICTIM)
    held = tuple(lab.leases_of(VICTIM))
    killed_at = time.monotonic()
    for pid in sorted(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    lab.thaw(pids)  # (gone: nothing left to thaw; keeps `frozen` accurate)
    outcome = Outcome("crash", VICTIM, event_at=killed_at, victim_targets=held)
    outcome.frozen_runs = len({r.pid for r in lab.open_runs(VICTIM)} & pids)
    outcome.moved_after_s = lab.wait_moved(held, VICTIM, killed_at)
    outcome.exit_codes = lab.wait_exits()
    outcome.runs = lab.runs()
    return outcome


def crash_alone(lab: ChaosLab) -> Outcome:
    """kill -9 of the victim's daemon alone (the OOM killer's case) while a run is in
    flight: its death watch must kill the orchestrators. `event_at` is the kill,
    `resumed_at` when the last of its runs' processes was gone (their end in the record)."""
    lab.wait_all_hosts_working(VICTIM)
    pids = lab.catch_in_flight(VICTIM)
    held = tuple(lab.leases_of(VICTIM))
    daemon = lab.daemons[VICTIM].pid
    in_flight = {r.pid for r in lab.open_runs(VICTIM)} & pids
    os.kill(daemon, signal.SIGKILL)
    killed_at = time.monotonic()
    lab.thaw(pids - {daemon})  # the orchestrators and the watch go on, alone
    outcome = Outcome("crash_alone", VICTIM, event_at=killed_at, victim_targets=held)
    outcome.frozen_runs = len(in_flight)
    wait_for(lambda: not any(_alive(p) for p in pids - {daemon}), timeout=30, interval=0.005,
             what=f"{VICTIM}'s runs to die with their daemon")  # fmt: skip
    outcome.resumed_at = time.monotonic()
    outcome.moved_after_s = lab.wait_moved(held, VICTIM, killed_at)
    outcome.exit_codes = lab.wait_exits()
    outcome.runs = lab.runs()
    return outcome


def _alive(pid: int) -> bool:
    """Running (or stopped): neither gone nor a zombie."""
    return (s := proc_stat(pid)) is not None and s[0] not in ("Z", "X")


def freeze(lab: ChaosLab) -> Outcome:
    """SIGSTOP the victim host with every process it started (a frozen VM) while a run is
    in flight, until its leases have moved and its targets run elsewhere, then SIGCONT it."""
    lab.wait_all_hosts_working(VICTIM)
    pids = lab.catch_in_flight(VICTIM)
    frozen_at = time.monotonic()
    held = tuple(lab.leases_of(VICTIM))
    outcome = Outcome("freeze", VICTIM, event_at=frozen_at, victim_targets=held)
    outcome.frozen_runs = len({r.pid for r in lab.open_runs(VICTIM)} & pids)
    outcome.moved_after_s = lab.wait_moved(held, VICTIM, frozen_at)
    lab.wait_rerun(held, VICTIM, frozen_at)
    outcome.resumed_at = time.monotonic()
    lab.thaw(pids)
    outcome.exit_codes = lab.wait_exits()
    outcome.runs = lab.runs()
    for run in outcome.runs:  # the victim's runs were not running while it was frozen
        if run.host == VICTIM:
            run.frozen.append((frozen_at, outcome.resumed_at))
    return outcome


def freeze_in_transaction(lab: ChaosLab) -> Outcome:
    """`freeze`, at a moment when the victim is inside a database transaction holding the
    budget row's lock (a VM paused between two statements of a reservation or a push)."""
    lab.wait_all_hosts_working(VICTIM)
    pids = lab.catch_in_transaction(VICTIM)
    frozen_at = time.monotonic()
    held = tuple(lab.leases_of(VICTIM))
    outcome = Outcome("freeze", VICTIM, event_at=frozen_at, victim_targets=held)
    outcome.moved_after_s = lab.wait_moved(held, VICTIM, frozen_at, timeout=LEASE_S * 3 + 6)
    outcome.resumed_at = time.monotonic()
    lab.thaw(pids)
    outcome.exit_codes = lab.wait_exits()
    outcome.runs = lab.runs()
    for run in outcome.runs:
        if run.host == VICTIM:
            run.frozen.append((frozen_at, outcome.resumed_at))
    return outcome


def db_restart(lab: ChaosLab, server: PrivatePostgres) -> Outcome:
    """Stop the database while runs are in flight, keep it down until one of them has
    ended and a host could not push its result, then start it again on the same port."""
    lab.wait_all_hosts_working(None)
    wait_for(lambda: any(r.end is None for r in lab.runs()), timeout=20, interval=0.01,
             what="a run in flight")  # fmt: skip
    stopped_at = time.monotonic()
    server.stop()
    wait_for(lambda: any(r.end is not None and r.end > stopped_at for r in lab.runs())
             and any(d.events("cluster_push_deferred") for d in lab.daemons.values()),
             timeout=30, interval=0.02, what="a result that cannot be pushed")  # fmt: skip
    outcome = Outcome("db_restart", None, event_at=stopped_at)
    server.restart()
    outcome.resumed_at = time.monotonic()
    outcome.exit_codes = lab.wait_exits()
    outcome.runs = lab.runs()
    return outcome


def play(lab: ChaosLab, scenario: str, server: PrivatePostgres | None = None) -> Outcome:
    """Write the config, create the schema, start the hosts and play `scenario`."""
    lab.write_targets()
    lab.init()
    lab.start_hosts()
    plays: dict[str, Callable[..., Outcome]] = {
        "crash": crash, "crash_alone": crash_alone, "freeze": freeze,
        "freeze_in_transaction": freeze_in_transaction,
    }  # fmt: skip
    if scenario == "db_restart":
        assert server is not None
        return db_restart(lab, server)
    return plays[scenario](lab)
