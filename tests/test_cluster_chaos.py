"""Chaos on a cluster (issue 13): three real `autoloopd` hosts on one PostgreSQL database,
running a fake orchestrator that records every run (target, iteration, host, fencing token,
start, end, pid). One host is crashed with its orchestrators (kill -9), or frozen with them
past its lease and thawed (SIGSTOP / SIGCONT), or the database is restarted under them.
Afterwards every invariant of tests/helpers/chaos_checks.py must hold: each target completed
exactly its iterations, each recorded once and matching exactly one run, no two runs of one
target at once except a thawed host's run for at most the margin derived from the timers
(lease 3 s less the renew deadline 1.5 s, plus the termination grace 0.5 s: 2 s), the money
exact to the cent and beyond, the cap held, and every lease of the lost host moved."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from autoloop_daemon.runs.deathwatch import BOUND_S
from tests.helpers.chaos import (
    LEASE_S,
    TERM_GRACE_S,
    VICTIM,
    ChaosLab,
    overlap_margin_s,
    play,
)
from tests.helpers.chaos_checks import assert_holds, check
from tests.helpers.cluster import fresh_database, server_dsn
from tests.helpers.private_pg import postgres_available, private_postgres

pytest.importorskip("psycopg", reason="cluster mode needs the optional extra autoloopd[cluster]")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ChaosLab]:
    """A chaos lab on a fresh database of the suite's server (AUTOLOOPD_TEST_DSN)."""
    for dsn in fresh_database():
        chaos = ChaosLab(tmp_path, dsn)
        try:
            yield chaos
        finally:
            chaos.stop_all()


def test_the_margin_is_the_lease_less_the_renew_deadline_plus_the_grace() -> None:
    """The overlap allowed to a thawed host's run, from the timers the lab uses."""
    assert overlap_margin_s() == LEASE_S - LEASE_S / 2 + TERM_GRACE_S == 2.0


def test_a_crashed_host_s_targets_are_completed_by_the_others(lab: ChaosLab) -> None:
    """kill -9 of h2 and its orchestrators while one of its runs is in flight: its leases
    expire and move, the run it lost is run again elsewhere (its reservation expired and
    charged for the time it ran), the two other hosts finish every target and exit 0, and
    nothing is counted twice or lost."""
    outcome = play(lab, "crash")
    figures = check(lab, outcome)
    assert_holds(figures)
    assert outcome.frozen_runs >= 1 and figures.runs_killed >= 1
    assert figures.expired >= 1 and figures.reruns >= 1
    assert figures.max_overlap_s == 0.0
    checked = 0
    for name in outcome.victim_targets:  # AUTOLOOPD_FENCE: a takeover gives a greater token
        before = {r.token for r in outcome.runs if r.target == name and r.host == VICTIM}
        later = [r for r in outcome.runs if r.start > outcome.event_at]
        after = {r.token for r in later if r.target == name and r.host != VICTIM}
        if before:
            checked += 1
            assert after and min(after) > max(before), (name, before, after)
    assert checked >= 1  # the run caught in flight was one of them


def test_a_daemon_killed_alone_takes_its_runs_with_it(lab: ChaosLab) -> None:
    """kill -9 of h2's daemon alone while one of its runs is in flight: its death watch
    kills the orchestrators within BOUND_S (room for this loaded machine in the wait), before
    the lease can move, so no run overlaps the new holder's; the money still holds."""
    outcome = play(lab, "crash_alone")
    figures = check(lab, outcome)
    assert_holds(figures)
    assert outcome.frozen_runs >= 1
    assert outcome.resumed_at is not None
    died_after_s = outcome.resumed_at - outcome.event_at
    assert died_after_s < 5 * BOUND_S, died_after_s
    assert figures.max_overlap_s == 0.0
    assert min(outcome.moved_after_s.values()) > died_after_s


def test_a_frozen_host_is_fenced_when_it_is_thawed(lab: ChaosLab) -> None:
    """SIGSTOP of h2 and its orchestrators while one of its runs is in flight, until its
    leases have moved and its targets run elsewhere, then SIGCONT: its run goes on for at
    most the margin beside the new holder's, its late result is refused (fenced) and only
    its real cost is booked, and every host, h2 included, exits 0 once all is done."""
    outcome = play(lab, "freeze")
    figures = check(lab, outcome)
    assert_holds(figures)
    assert outcome.frozen_runs >= 1 and figures.reruns >= 1
    assert figures.fenced_late_writes >= 1 and figures.fenced_writes_logged >= 1
    assert outcome.exit_codes[VICTIM] == 0
    # Nothing new starts under a stale lease after the thaw: a run starts only while its
    # lease was confirmed within half a lease (keeper.fresh), and the thawed host's first
    # renewal finds the moved leases gone. A stale run: one of h2's started after the thaw
    # under a token lower than one another host already ran that target with.
    assert outcome.resumed_at is not None
    stale = [
        r.describe()
        for r in outcome.runs
        if r.host == VICTIM
        and r.start > outcome.resumed_at
        and any(o.target == r.target and o.host != VICTIM and o.token > r.token
                and o.start < r.start for o in outcome.runs)
    ]  # fmt: skip
    assert stale == []


def test_a_host_frozen_inside_a_transaction_does_not_stall_the_cluster(lab: ChaosLab) -> None:
    """As the frozen host above, frozen between two statements of a transaction that holds
    the budget row's lock (a reservation, a settlement, a push; 12 iterations a target:
    catching that moment may take a while): the server ends that transaction (its idle
    timeout, a quarter of the lease), so its leases still move within the lease, the
    other hosts go on (before that timeout they all waited on the lock and fenced
    themselves), and everything holds afterwards."""
    lab.iterations = 12
    outcome = play(lab, "freeze_in_transaction")
    assert_holds(check(lab, outcome))


def test_a_database_restart_loses_nothing(tmp_path: Path) -> None:
    """The database (a private server: the suite's shared one is not disturbed) stops while
    runs are in flight and starts again on the same port once one of them has finished:
    the results are pushed when it is back (a host that fenced itself meanwhile claims its
    targets again), every target completes exactly its iterations, and the money is exact."""
    server_dsn()  # like every cluster test: skipped without AUTOLOOPD_TEST_DSN
    why = postgres_available()
    if why:
        pytest.skip(why)
    with private_postgres() as server:
        chaos = ChaosLab(tmp_path, server.dsn)
        try:
            outcome = play(chaos, "db_restart", server)
            figures = check(chaos, outcome)
        finally:
            chaos.stop_all()
    assert_holds(figures)
    assert figures.pushes_deferred_logged >= 1
