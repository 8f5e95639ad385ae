"""Allocation and goals: the gain-per-dollar estimate, ranked concurrency slots (with
aging), and the new stops (target score, low yield, deadline) with their one-target flags."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.admission import AGING_ROUNDS, RankedSlots
from autoloop_daemon.engine.stop_control import StopControl
from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.policy.allocation import (
    RateEvidence,
    closure,
    gain_per_usd,
    headroom,
    pooled_rate,
    shrunk_rate,
)
from autoloop_daemon.policy.deadline import check_deadline, deadline_after
from autoloop_daemon.policy.stops import Goals, goal_reason
from autoloop_daemon.policy.yield_bound import gain_per_usd_upper, rate_upper
from autoloop_daemon.storage.files.store import FileStorage
from autoloop_daemon.vocab import TargetStatus
from tests.helpers.fakes import orchestrator_argv
from tests.helpers.process import run_autoloopd


def test_closure_counts_the_share_of_headroom_closed_by_the_best_so_far() -> None:
    """0.5 -> 0.6 closes 0.1 of 0.47; a worse score closes nothing; one score is no step."""
    assert closure([0.5]) == RateEvidence(0.0, 0)
    ev_ = closure([0.5, 0.6, 0.55])
    assert ev_.iterations == 2
    assert ev_.closed == pytest.approx(0.1 / 0.47)


def test_the_rate_is_shrunk_towards_the_pool_and_gain_is_per_dollar() -> None:
    """A target with no history gets the pooled rate; gain scales with headroom / cost."""
    pooled = pooled_rate([RateEvidence(1.0, 4), RateEvidence(0.0, 6)])
    assert pooled == pytest.approx(0.1)
    assert shrunk_rate(RateEvidence(0.0, 0), pooled) == pytest.approx(0.1)
    cheap = gain_per_usd([0.5], 0.5, pooled)
    dear = gain_per_usd([0.5], 1.0, pooled)
    near_top = gain_per_usd([0.95], 0.5, pooled)
    assert cheap == pytest.approx(2 * dear)
    assert near_top < cheap


def test_per_dimension_headroom_sees_lagging_dimensions() -> None:
    """A weighted score near the top with a dimension far below 0.80 still has room."""
    assert headroom(0.96) == pytest.approx(0.01)
    assert headroom(0.96, {"a": 1.0, "b": 0.4}) == pytest.approx(0.2)


def test_goal_reason_checks_target_score_then_yield_then_deadline() -> None:
    """Each goal stops with its own status; the yield only after 3 scored iterations."""
    now = datetime(2026, 12, 1, tzinfo=UTC)
    kw = {"scored": 5, "gain_per_usd": lambda: 0.01, "now": now}
    assert goal_reason(Goals(target_score=0.8), best=0.81, **kw) == "stopped_target_reached"
    assert goal_reason(Goals(min_gain_per_usd=0.1), best=0.5, **kw) == "stopped_low_yield"
    early = {**kw, "scored": 2}
    assert goal_reason(Goals(min_gain_per_usd=0.1), best=0.5, **early) is None
    past = Goals(deadline_at=now - timedelta(seconds=1))
    assert goal_reason(past, best=0.5, **kw) == "stopped_deadline"
    assert goal_reason(Goals(), best=0.99, **kw) is None


def test_a_daily_deadline_is_the_next_such_time_after_the_start() -> None:
    """ "18:00" after 19:00 is tomorrow's; an ISO timestamp is itself; junk is refused."""
    start = datetime(2026, 12, 1, 19, 0, tzinfo=UTC)
    assert deadline_after("18:00", start, UTC) == datetime(2026, 12, 2, 18, 0, tzinfo=UTC)
    assert deadline_after("20:30", start, UTC) == datetime(2026, 12, 1, 20, 30, tzinfo=UTC)
    stamp = "2026-12-01T10:00:00Z"
    assert deadline_after(stamp, start, UTC) == datetime(2026, 12, 1, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match="HH:MM"):
        check_deadline("tomorrow")


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_ranked_slots_go_to_the_best_rank_and_aging_lets_everyone_through() -> None:
    """With one slot held, waiters are served by rank (read when the slot frees up), and
    a waiter passed over `max_passes` times goes first."""
    slots = RankedSlots(1, max_passes=2)
    await slots.acquire()
    order: list[str] = []
    ranks = {"low": 0.1, "mid": 0.5, "high": 0.9}

    async def want(name: str) -> None:
        await slots.acquire_ranked(lambda: ranks[name])
        order.append(name)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for name in ranks:
                tg.start_soon(want, name)
            await anyio.wait_all_tasks_blocked()
            assert slots.statistics().tasks_waiting == 3
            ranks["mid"] = 1.0  # ranks are read at grant time
            for _ in range(3):
                slots.release()
                await anyio.wait_all_tasks_blocked()
    assert order == ["mid", "high", "low"]

    # Aging: "low" is passed over twice, then goes before a better-ranked newcomer.
    order.clear()
    ranks.update(low=0.0, mid=0.5, high=0.9)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for name in ("low", "mid", "high"):
                tg.start_soon(want, name)
                await anyio.wait_all_tasks_blocked()
            slots.release()  # high (low passed over once)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(want, "high")
            await anyio.wait_all_tasks_blocked()
            slots.release()  # high again (low passed over twice)
            await anyio.wait_all_tasks_blocked()
            for _ in range(2):
                slots.release()
                await anyio.wait_all_tasks_blocked()
            slots.release()
    assert order[:3] == ["high", "high", "low"]


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_default_aging_serves_the_worst_ranked_within_three_rounds_of_the_waiters() -> None:
    """Four well-ranked targets that queue again after each turn (as running targets do)
    and one ranked below them all: by default the low one is served once it was passed
    over AGING_ROUNDS (3) times the waiters (4 wait while one runs), not before and not
    never (every other turn went to the best-ranked waiter)."""
    assert AGING_ROUNDS == 3
    slots = RankedSlots(1)
    await slots.acquire()
    served: list[str] = []
    low_done = anyio.Event()

    async def target(name: str, rank: float) -> None:
        while not low_done.is_set():
            await slots.acquire_ranked(lambda: rank)
            served.append(name)
            if name == "low":
                low_done.set()
            await anyio.lowlevel.checkpoint()
            slots.release()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(target, "low", 0.0)
            await anyio.wait_all_tasks_blocked()
            for i in range(4):
                tg.start_soon(target, f"good{i}", 1.0 + i)
            await anyio.wait_all_tasks_blocked()
            slots.release()
            await low_done.wait()
    assert served.index("low") == AGING_ROUNDS * 4
    assert set(served[: AGING_ROUNDS * 4]) == {"good3", "good2"}  # the best two alternate


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_fair_turn_slots_serve_the_longest_unserved_first_and_skip_a_cancelled_waiter() -> (
    None
):
    """With `fair_turns` the turn is read when a target queues (it cannot change while it
    waits): the highest turn goes first, equal turns in arrival order, and a waiter whose
    wait was cancelled neither gets a slot nor counts as waiting."""
    slots = RankedSlots(1, fair_turns=True)
    await slots.acquire()
    order: list[str] = []
    turns = {"a": -5.0, "b": -1.0, "c": -5.0, "cancelled": 0.0}

    async def want(name: str) -> None:
        await slots.acquire_ranked(lambda: turns[name])
        order.append(name)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for name in ("a", "b", "c"):
                tg.start_soon(want, name)
                await anyio.wait_all_tasks_blocked()
            async with anyio.create_task_group() as doomed:
                doomed.start_soon(want, "cancelled")  # the best turn, cancelled while waiting
                await anyio.wait_all_tasks_blocked()
                assert slots.statistics().tasks_waiting == 4
                doomed.cancel_scope.cancel()
            assert slots.statistics().tasks_waiting == 3
            for _ in range(3):
                slots.release()
                await anyio.wait_all_tasks_blocked()
    assert order == ["b", "a", "c"]
    assert slots.statistics().tasks_waiting == 0


@pytest.mark.anyio
@pytest.mark.no_blocking
@pytest.mark.parametrize("fair_turns", [True, False])
async def test_a_cancelled_waiter_leaves_the_queue_and_the_next_gets_the_slot(
    fair_turns: bool,
) -> None:
    """Ranked or fair: the best-ranked waiter's wait is cancelled; the freed slot goes to
    the other waiter, and no slot is lost or counted twice."""
    slots = RankedSlots(1, fair_turns=fair_turns)
    await slots.acquire()
    got: list[str] = []
    first = anyio.CancelScope()

    async def want(name: str, rank: float) -> None:
        with first if name == "first" else anyio.CancelScope():
            await slots.acquire_ranked(lambda: rank)
            got.append(name)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(want, "first", 1.0)
            tg.start_soon(want, "second", 0.0)
            await anyio.wait_all_tasks_blocked()
            first.cancel()
            await anyio.wait_all_tasks_blocked()
            assert slots.statistics().tasks_waiting == 1
            slots.release()
    assert got == ["second"]
    assert slots.available_tokens == 0 and slots.statistics().tasks_waiting == 0
    slots.release()
    assert slots.available_tokens == 1


@pytest.mark.anyio
async def test_gain_per_usd_allocation_runs_the_fleet_through_ranked_slots(
    tmp_path: Path,
) -> None:
    """End to end in process: with allocation gain_per_usd and one slot, every target runs
    to its own stop; the money stays within the shared cap."""
    specs = []
    for i, name in enumerate(("a", "b", "c")):
        (tmp_path / name).mkdir()
        specs.append(
            TargetSpec(
                name=name,
                path=tmp_path / name,
                state_root=tmp_path / "state" / name,
                mode="continuous",
                cooldown_minutes=0.0,
                max_iterations=4,
                dry_run=True,
                seed=i,
                simulated_seconds=0.0,
                plateau_window=0,
                oscillation_window=0,
                max_iteration_cost_usd=0.25,
            )
        )
    events: list[ev.Event] = []
    sup = Supervisor(
        specs, storage=FileStorage(tmp_path / "state"), budget_cap_usd=2.0,
        max_concurrent=1, grace_s=5.0, allocation="gain_per_usd",
    )  # fmt: skip
    sup.events.subscribe(events.append)
    with anyio.fail_after(30):
        assert await sup.run() == 0
    stops = {e.target: e.status for e in events if isinstance(e, ev.TargetStopped)}
    assert set(stops) == {"a", "b", "c"}
    assert set(stops.values()) <= {TargetStatus.STOPPED_MAX_ITER, TargetStatus.STOPPED_BUDGET}
    assert sup.snapshot().budget.spent_usd <= 2.0 + 1e-9


def _state(root: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((root / "autoloop_state.json").read_text())
    return data


@pytest.mark.parametrize(
    ("flags", "status"),
    [
        (["--target-score", "0.01"], "stopped_target_reached"),
        (["--min-gain-per-usd", "1000000"], "stopped_low_yield"),
        (["--deadline", "2000-01-01T00:00:00Z"], "stopped_deadline"),
    ],
)
def test_one_target_flags_stop_with_their_status(
    tmp_path: Path, flags: list[str], status: str
) -> None:
    """--target-score, --min-gain-per-usd and --deadline stop the one-target form."""
    target, root = tmp_path / "skill", tmp_path / "state"
    target.mkdir()
    args = ["--target", str(target), "--state-root", str(root), "--dry-run"]
    args += ["--simulated-seconds", "0", "--max-iterations", "10", "--plateau-window", "50"]
    args += ["--oscillation-window", "0", "--mode", "continuous", "--cooldown-minutes", "0"]
    args += ["--max-cost", "100", *flags]
    done = run_autoloopd(args, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    state = _state(root)
    assert state["status"] == status
    completed = state["iterations_completed"]
    assert isinstance(completed, int)
    if status == "stopped_low_yield":
        assert completed == 3  # checked once 3 scored iterations exist
    elif status == "stopped_target_reached":
        assert completed == 1
    else:
        assert completed == 0
    assert math.isfinite(float(str(state["total_cost_usd"])))


def test_a_bad_deadline_flag_is_a_usage_error(tmp_path: Path) -> None:
    """--deadline that is neither HH:MM nor a timestamp exits 2 naming the flag."""
    done = run_autoloopd(
        ["--target", str(tmp_path), "--state-root", str(tmp_path / "s"), "--deadline", "soon"]
    )
    assert done.returncode == 2
    assert "--deadline" in done.stderr


def test_low_yield_stops_only_when_below_the_least_with_confidence() -> None:
    """Three noisy iterations that closed little: the point estimate is below a least of
    0.08 per dollar but its 90 % upper bound is not (go on); a flat history in a fleet
    that closes little brings the bound below it too (stop). The bound is never below the
    estimate and never above a whole headroom per iteration."""
    pooled = 0.2
    few = [0.5, 0.5, 0.52, 0.52]
    assert gain_per_usd(few, 1.0, pooled) < 0.08 < gain_per_usd_upper(few, 1.0, pooled)
    assert gain_per_usd_upper([0.5] * 8, 1.0, 0.01) < 0.08
    for closed, steps in [(0.0, 0), (1.0, 4), (4.0, 4), (0.0, 4)]:
        bound = rate_upper(closed, steps, pooled)
        assert shrunk_rate(RateEvidence(closed, steps), pooled) <= bound <= 1.0


def test_low_yield_waits_for_firm_evidence_through_the_binary(tmp_path: Path) -> None:
    """Scores 0.50, 0.50, 0.52, then flat, at $1 a run, `--min-gain-per-usd 0.03`: after 3
    runs the estimate (about 0.01) is below the least but its 90 % bound (about 0.05) is
    not, so the target goes on (it used to stop there) until the flat runs make the bound
    fall below the least too."""
    target, root = tmp_path / "skill", tmp_path / "state"
    target.mkdir()
    scores = "0.5,0.5,0.52,0.52,0.52,0.52,0.52,0.52,0.52,0.52"
    cmd = " ".join(orchestrator_argv("keep", "--scores", scores, "--cost", "1.0"))
    args = ["--target", str(target), "--state-root", str(root), "--orchestrator-cmd", cmd]
    args += ["--max-iterations", "10", "--plateau-window", "50", "--oscillation-window", "0"]
    args += ["--mode", "continuous", "--cooldown-minutes", "0", "--max-cost", "100"]
    done = run_autoloopd([*args, "--min-gain-per-usd", "0.03"], timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    state = _state(root)
    assert state["status"] == "stopped_low_yield", state
    completed = state["iterations_completed"]
    assert isinstance(completed, int)
    assert 3 < completed < 10, state


@pytest.mark.anyio
@pytest.mark.no_blocking
@pytest.mark.parametrize("fair_turns", [True, False])
async def test_a_stop_withdraws_a_slot_wait_and_the_slot_goes_on(fair_turns: bool) -> None:
    """`StopControl.slot`: a stop request ends the wait without a slot (no cancel scope
    involved); withdrawn just as the slot was granted, the slot is handed on, never lost;
    a stop requested before the wait takes none."""
    slots = RankedSlots(1, fair_turns=fair_turns)
    await slots.acquire()
    stops = {name: StopControl() for name in ("first", "second", "third")}
    got: dict[str, bool] = {}

    async def want(name: str, rank: float) -> None:
        got[name] = await stops[name].slot(slots, lambda: rank)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(want, "first", 2.0)
            tg.start_soon(want, "second", 1.0)
            await anyio.wait_all_tasks_blocked()
            stops["second"].request(0.0, TargetStatus.STOPPED_SIGNAL)
            await anyio.wait_all_tasks_blocked()
            assert got == {"second": False}
            assert slots.statistics().tasks_waiting == 1
            slots.release()  # granted to "first" ...
            stops["first"].cancel_wait()  # ... and withdrawn before it resumed: too late
        assert got == {"second": False, "first": True}
        assert slots.available_tokens == 0
        slots.release()
        free_before = slots.available_tokens
        stops["third"].request(0.0, TargetStatus.STOPPED_SIGNAL)
        await want("third", 0.0)
    assert got["third"] is False and free_before == 1 == slots.available_tokens


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_a_withdrawn_grant_is_handed_on() -> None:
    """The slot reaches a waiter whose wait was withdrawn before it ran: it passes the slot
    to the next waiter instead of keeping or losing it."""
    slots = RankedSlots(1)
    await slots.acquire()
    stop = StopControl()
    got: list[tuple[str, bool]] = []

    async def want(name: str, rank: float, control: StopControl) -> None:
        got.append((name, await control.slot(slots, lambda: rank)))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(want, "withdrawn", 1.0, stop)
            tg.start_soon(want, "next", 0.0, StopControl())
            await anyio.wait_all_tasks_blocked()
            stop.cancel_wait()  # withdrawn, still in the queue until its task runs ...
            slots.release()  # ... so the grant may go to it: it must hand it on
    assert sorted(got) == [("next", True), ("withdrawn", False)]
    assert slots.available_tokens == 0 and slots.statistics().tasks_waiting == 0


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_stop_control_sleep_ends_on_time_on_a_wake_and_on_a_stop() -> None:
    """`StopControl.sleep`: True after its time; False at once on `cancel_wait` or a stop
    request, and at once when the stop came before; an outer cancel scope still cancels it."""
    stop = StopControl()
    with anyio.fail_after(5):
        assert await stop.sleep(0.01) is True
        results: list[bool] = []

        async def nap() -> None:
            results.append(await stop.sleep(3600))

        async with anyio.create_task_group() as tg:
            tg.start_soon(nap)
            await anyio.wait_all_tasks_blocked()
            stop.cancel_wait()
        async with anyio.create_task_group() as tg:
            tg.start_soon(nap)
            await anyio.wait_all_tasks_blocked()
            stop.request(5.0, TargetStatus.STOPPED_SIGNAL)
        assert results == [False, False]
        assert await stop.sleep(3600) is False
        with anyio.move_on_after(0.01) as scope:
            await StopControl().sleep(3600)
        assert scope.cancelled_caught
