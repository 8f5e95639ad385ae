"""A host's mirror of the cluster's budget (cluster/budget.py) on a real PostgreSQL:
the live meters of a run must see the cluster with the run's own reservation in it.

Found by the chaos tests: a host whose mirror was last read while other hosts held the whole
cap reserved got a reservation once they settled and started the run at once; its meter,
planned against the old mirror (nothing left), cut the run within milliseconds ("its live
cost would pass the shared budget's cap") and the target ended `stopped_budget` for good,
with almost all of the budget unspent."""

from __future__ import annotations

import pytest

from autoloop_daemon.cluster.budget import ClusterSharedBudget
from autoloop_daemon.storage.postgres import leases
from autoloop_daemon.storage.postgres.db import Database
from autoloop_daemon.storage.postgres.ledger import ClusterBudget, ClusterReservation

pytestmark = pytest.mark.anyio


async def test_a_granted_reservation_is_in_the_mirror_before_its_run_starts(db: Database) -> None:
    """Host A holds the whole $1 cap reserved while host B's mirror is read (nothing left
    for B); A settles for $0.10; B's reservation of $0.50 is granted, and by the time
    `reserve` returns (the run starts next) B's meters may spend at least that much."""
    await leases.register(db, ["a", "b"])
    (lease_a,) = await leases.claim(db, "A", ["a"], 60)
    (lease_b,) = await leases.claim(db, "B", ["b"], 60)
    host_a = ClusterBudget(db)
    await host_a.ensure(1.0)
    held = await host_a.reserve(lease_a, 1, 1.0)
    assert held is not None
    host_b = ClusterSharedBudget(
        ClusterBudget(db), 1.0, lease_of=lambda _: lease_b, may_start=lambda: True,
        on_lost=lambda _: None,
    )  # fmt: skip
    await host_b.start(1.0)
    assert host_b.ledger.cap_usd - host_b.ledger.spent_usd <= 1e-9  # A holds it all
    await host_a.settle(held, 0.1)
    got = await host_b.reserve("b", 0.5, iteration=1)
    assert isinstance(got, ClusterReservation) and got.amount_usd == 0.5
    left = host_b.ledger.cap_usd - host_b.ledger.spent_usd
    assert left >= 0.5 - 1e-9, f"B's meters may spend {left}, less than its reservation"
