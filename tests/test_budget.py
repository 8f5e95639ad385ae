"""The shared budget: reservation arithmetic and waiting for settlements."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from autoloop_daemon.engine.budget import SharedBudget
from autoloop_daemon.policy.ledger import Ledger, estimate_cost


def test_ledger_reserves_only_what_fits() -> None:
    """Spent plus reserved plus the new reservation never exceeds the cap."""
    ledger = Ledger(cap_usd=1.0, spent_usd=0.25)
    first = ledger.reserve("a", 0.5)
    assert first is not None
    assert ledger.reserve("b", 0.5) is None  # 0.25 + 0.5 + 0.5 > 1.0
    assert ledger.reserve("b", 0.25) is not None  # an exact fit is allowed
    ledger.settle(first, 0.4)
    assert ledger.spent_usd == pytest.approx(0.65)
    ledger.settle(first, 0.4)  # settling twice changes nothing
    assert ledger.spent_usd == pytest.approx(0.65)


def test_estimate_prefers_history_then_configured_then_fallback() -> None:
    """The reservation is the largest recent cost, else the configured estimate, else fallback."""
    assert estimate_cost([0.1, 0.5, 0.2, 0.3], 9.0, 1.0) == 0.5
    assert estimate_cost([], 2.0, 1.0) == 2.0
    assert estimate_cost([], None, 1.0) == 1.0


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_reserve_waits_for_settlement_then_gives_up_when_nothing_runs() -> None:
    """A reservation that does not fit waits for running ones; alone, it is refused."""
    budget = SharedBudget(cap_usd=1.0)
    held = await budget.reserve("a", 0.8)
    assert held is not None
    results: list[object] = []

    async def second() -> None:
        results.append(await budget.reserve("b", 0.5))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            assert results == []  # still waiting
            budget.settle(held, 0.7)  # 0.7 spent: 0.5 no longer fits and nothing runs
    assert results == [None]
    assert budget.spent_usd == pytest.approx(0.7)


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_many_concurrent_reservations_never_overcommit() -> None:
    """With 50 tasks competing, reserved plus spent never passes the cap."""
    budget = SharedBudget(cap_usd=10.0)
    peak = 0.0

    async def worker() -> None:
        nonlocal peak
        while True:
            r = await budget.reserve("w", 0.3)
            if r is None:
                return
            peak = max(peak, budget.ledger.spent_usd + budget.ledger.reserved_usd)
            await anyio.lowlevel.checkpoint()
            budget.settle(r, 0.3)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(worker)
    assert peak <= 10.0 + 1e-9
    assert budget.spent_usd <= 10.0 + 1e-9
    assert budget.spent_usd > 10.0 - 0.3 - 1e-9
