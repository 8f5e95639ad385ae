"""Budget windows: the window arithmetic, the ledger's cap per window, waiting for the next
window, thresholds once per window, and a real fleet under a "6s" window end to end."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import anyio
import pytest

from autoloop_daemon.clock import now_utc, parse_iso
from autoloop_daemon.config.alerts import AlertSettings
from autoloop_daemon.config.loader import load_config
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.admission import RankedSlots
from autoloop_daemon.engine.budget import SharedBudget, WindowFull
from autoloop_daemon.engine.snapshot import BudgetSnapshot, FleetSnapshot
from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.engine.target_runner import TargetRunner
from autoloop_daemon.engine.waits import Waits
from autoloop_daemon.exceptions import ConfigError
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.observers.alerts import Alerter
from autoloop_daemon.observers.metrics import Metrics
from autoloop_daemon.policy.ledger import Ledger, Reservation
from autoloop_daemon.policy.thresholds import crossings, new_crossings
from autoloop_daemon.policy.windows import BudgetWindow, parse_window
from autoloop_daemon.status_text import render_summary
from autoloop_daemon.storage.files.store import FileStorage, FileTargetStore
from autoloop_daemon.vocab import TargetStatus
from tests.helpers.config import TARGET_A
from tests.helpers.logs import read_jsonl

PARIS = "Europe/Paris"


def _at(text: str) -> datetime:
    moment = parse_iso(text)
    assert moment is not None
    return moment


def test_calendar_windows_open_at_local_midnight_monday_and_the_first() -> None:
    """daily/weekly/monthly windows follow the zone's calendar, DST days included."""
    daily = parse_window("daily", PARIS)
    # 2026-03-29 is the spring-forward day in Paris: 23 hours long.
    start, end = daily.bounds(_at("2026-03-29T12:00:00Z"))
    assert (start, end) == (_at("2026-03-28T23:00:00Z"), _at("2026-03-29T22:00:00Z"))
    weekly = parse_window("weekly", PARIS)
    start, end = weekly.bounds(_at("2026-12-03T10:00:00Z"))  # a Thursday
    assert (start, end) == (_at("2026-11-29T23:00:00Z"), _at("2026-12-06T23:00:00Z"))
    monthly = parse_window("monthly", "UTC")
    start, end = monthly.bounds(_at("2026-12-31T23:59:59Z"))
    assert (start, end) == (_at("2026-12-01T00:00:00Z"), _at("2027-01-01T00:00:00Z"))


def test_duration_windows_are_multiples_of_their_length_since_the_epoch() -> None:
    """`6h` windows start at 00:00, 06:00... UTC whatever the zone; `30s` at :00 and :30."""
    six = parse_window("6h", PARIS)
    assert six.bounds(_at("2026-12-01T13:45:00Z")) == (
        _at("2026-12-01T12:00:00Z"),
        _at("2026-12-01T18:00:00Z"),
    )
    thirty = parse_window("30s")
    assert thirty.bounds(_at("2026-12-01T13:45:31Z"))[0] == _at("2026-12-01T13:45:30Z")


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ('window = "fortnightly"', "budget.window"),
        ('window = "0s"', "budget.window"),
        ('window = "daily"\nwindow_timezone = "Mars/Olympus"', "budget.window_timezone"),
        ('allocation = "random"', "budget.allocation"),
    ],
)
def test_a_bad_window_key_is_one_line_naming_it(tmp_path: Path, keys: str, problem: str) -> None:
    """An unknown window, zone or allocation is refused with the key's name."""
    (tmp_path / "a").mkdir()
    config = tmp_path / "c.toml"
    config.write_text(f"[budget]\n{keys}\n" + TARGET_A)
    with pytest.raises(ConfigError, match=problem):
        load_config(config)


def test_ledger_caps_each_window_and_charges_a_run_to_the_window_it_was_reserved_in() -> None:
    """The tighter of the lifetime and window caps applies; a new window starts from zero,
    and a run reserved in the old window does not count in the new one."""
    ledger = Ledger(cap_usd=10.0)
    ledger.window_cap_usd = 1.0
    ledger.roll("w1")
    held = ledger.reserve("a", 0.6)
    assert held is not None
    assert ledger.reserve("b", 0.6) is None  # the window's cap, not the lifetime's
    assert ledger.roll("w2")
    assert ledger.reserve("b", 0.6) is not None
    ledger.settle(held, 0.5)  # charged to w1: the lifetime total, not w2
    assert (ledger.spent_usd, ledger.window_spent_usd) == (0.5, 0.0)


@pytest.mark.anyio
async def test_a_full_window_waits_for_the_next_and_the_lifetime_cap_still_stops() -> None:
    """`reserve` says WindowFull (with the reset time) when only the window is spent, and
    None when the lifetime cap is reached."""
    now = [_at("2026-12-01T10:00:05Z")]
    window = BudgetWindow(parse_window("30s"), cap_usd=1.0)
    budget = SharedBudget(2.0, window=window, clock=lambda: now[0])
    first = await budget.reserve("a", 0.8)
    assert first is not None and not isinstance(first, WindowFull)
    budget.settle(first, 0.8)
    full = await budget.reserve("a", 0.8)
    assert full == WindowFull(_at("2026-12-01T10:00:30Z"))
    now[0] = _at("2026-12-01T10:00:31Z")
    assert budget.roll() and budget.window_spent_usd == 0.0
    second = await budget.reserve("a", 0.8)
    assert second is not None and not isinstance(second, WindowFull)
    budget.settle(second, 0.8)
    assert await budget.reserve("a", 0.8) is None  # 1.6 + 0.8 > the lifetime 2.0


def test_thresholds_fire_once_per_window() -> None:
    """A window's crossings are keyed by its start: the same fraction fires again in the
    next window, never twice in one."""
    fired: set[str] = set()
    first = new_crossings(crossings(0.5, 1.0, [0.5, 0.8], window="w1"), fired)
    assert [c.fraction for c in first] == [0.5]
    fired |= {c.key for c in first}
    assert new_crossings(crossings(0.6, 1.0, [0.5, 0.8], window="w1"), fired) == []
    again = new_crossings(crossings(0.9, 1.0, [0.5, 0.8], window="w2"), fired)
    assert [(c.scope, c.fraction) for c in again] == [("window", 0.5), ("window", 0.8)]


def _snapshot() -> FleetSnapshot:
    return FleetSnapshot(
        pid=1, started_at="2026-01-01T00:00:00Z", ready=True, shutting_down=False,
        budget=BudgetSnapshot(spent_usd=0.0, reserved_usd=0.0, cap_usd=None), targets=(),
    )  # fmt: skip


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_alerter_sends_a_window_threshold_once_per_window(tmp_path: Path) -> None:
    """BudgetChanged events of two windows raise `budget_threshold` once in each."""
    out = tmp_path / "alerts.jsonl"
    script = f"import sys; open({str(out)!r}, 'a').write(sys.stdin.read().strip() + '\\n')"
    rule = AlertSettings(
        events=["budget_threshold"], command=["python3", "-c", script], budget_fractions=[0.5]
    )
    alerter = Alerter([rule], state_dir=tmp_path, snapshot=_snapshot)
    inf = math.inf
    for spent, window in ((0.6, "w1"), (0.7, "w1"), (0.2, "w2"), (0.55, "w2")):
        alerter(ev.BudgetChanged(spent, 0.0, inf, window, spent, 1.0))
    async with anyio.create_task_group() as tg:
        await tg.start(alerter.run)
        await alerter.finish(limit_s=30)
    sent = read_jsonl(out)
    assert [(a["scope"], a["window"]) for a in sent] == [("window", "w1"), ("window", "w2")]


async def _wait_until_window_has(seconds_left: float, length_s: float) -> None:
    """Start at a known place in a window: if less than `seconds_left` remain, wait for
    the next one (the window is wall-clock time, so the test follows it)."""
    now = now_utc().timestamp()
    left = length_s - now % length_s
    if left < seconds_left:
        await anyio.sleep(left + 0.05)


@pytest.mark.anyio
async def test_a_6s_window_caps_spend_per_window_and_the_target_resumes_in_the_next(
    tmp_path: Path,
) -> None:
    """End to end (real supervisor, files, simulator): one run fits a window's cap, the
    target then waits (`waiting_budget`, resuming at the window's end) and goes on by
    itself in the next window; every window's logged spend stays within its cap. The cap
    per window is one run's reservation, so the test takes at most one window and the
    start-up margin (6 s + 4 s; the first run takes well under a second in-process)."""
    (tmp_path / "skill").mkdir()
    spec = TargetSpec(
        name="skill", path=tmp_path / "skill", state_root=tmp_path / "state" / "skill",
        mode="continuous", cooldown_minutes=0.0, max_iterations=2, max_cost_usd=50.0,
        plateau_window=100, oscillation_window=0, dry_run=True, simulated_seconds=0.01,
        max_iteration_cost_usd=0.25,
    )  # fmt: skip
    window = BudgetWindow(parse_window("6s"), cap_usd=0.25)
    events: list[ev.Event] = []
    sup = Supervisor(
        [spec], storage=FileStorage(tmp_path / "state"), budget_cap_usd=math.inf,
        max_concurrent=1, grace_s=5.0, window=window,
    )  # fmt: skip
    sup.events.subscribe(events.append)
    with anyio.fail_after(45):
        await _wait_until_window_has(4.0, 6.0)
        assert await sup.run() == 0
    waits = [e for e in events if isinstance(e, ev.WaitingBudget)]
    assert len(waits) == 1
    log = read_jsonl(spec.state_root / "iteration_log.jsonl")
    assert len(log) == 2
    by_window: dict[datetime, float] = defaultdict(float)
    for line in log:
        by_window[window.window.bounds(_at(line["started_at"]))[0]] += line["cost_usd"]
    assert all(spent <= 0.25 + 1e-9 for spent in by_window.values())
    assert len(by_window) == 2
    assert _at(log[1]["started_at"]) >= _at(waits[0].reset_at)
    state = json.loads((spec.state_root / "autoloop_state.json").read_text())
    assert state["status"] == TargetStatus.STOPPED_MAX_ITER


def test_status_and_metrics_show_the_window_and_its_reset_time() -> None:
    """The snapshot's status line speaks of the window's money; /metrics has its gauges."""
    snap = FleetSnapshot(
        pid=1, started_at="x", ready=True, shutting_down=False, targets=(),
        budget=BudgetSnapshot(
            spent_usd=3.0, reserved_usd=0.0, cap_usd=None, window="daily",
            window_start="2026-12-01T00:00:00Z", window_resets_at="2026-12-02T00:00:00Z",
            window_spent_usd=1.0, window_cap_usd=2.0,
        ),
    )  # fmt: skip
    assert snap.status_line().endswith("$1.00 of $2.00 spent this daily window")
    text = Metrics(lambda: snap).render().decode()
    assert 'autoloopd_budget_window_spent_usd{window="daily"} 1.0' in text
    assert 'autoloopd_budget_window_cap_usd{window="daily"} 2.0' in text
    reset = next(
        line.split()[-1]
        for line in text.splitlines()
        if line.startswith("autoloopd_budget_window_resets_timestamp_seconds{")
    )
    assert float(reset) == _at("2026-12-02T00:00:00Z").timestamp()


def test_status_summary_prints_the_window_line() -> None:
    """`autoloopd status` prints the window, its money and when the next one opens."""
    report = {
        "daemon": {"source": "socket", "uptime_s": 5.0, "pid": 1},
        "budget": {
            "spent_usd": 3.0, "reserved_usd": 0.0, "cap_usd": None, "window": "6h",
            "window_spent_usd": 1.0, "window_cap_usd": 2.0,
            "window_resets_at": "2026-12-01T18:00:00Z",
        },
    }  # fmt: skip
    summary = render_summary(report)
    assert "window: 6h, $1.00 of $2.00 spent, next window at 2026-12-01T18:00:00Z" in summary


@pytest.mark.anyio
async def test_a_turn_held_through_a_full_window_keeps_its_place_in_line(
    tmp_path: Path,
) -> None:
    """`allocation = "fcfs"`: a target first in line finds the window full and waits it out
    holding its slot. Its turn stays the one it got the slot with, not the moment its sleep
    ended: two targets that waited out a window together queue next in the order they were
    served, whichever woke first (before, the later-served one that woke first went ahead
    and ran once more than the other: test_money_edges' fair-turn test, 2 in 240 runs)."""
    slots = RankedSlots(2, fair_turns=True)
    budget = SharedBudget(math.inf, window=BudgetWindow(parse_window("1s"), cap_usd=0.1))
    budget.charge(0.1)  # this window is full; the next one opens within a second
    target = TargetSpec(
        name="skill", path=tmp_path / "skill", state_root=tmp_path / "state" / "skill",
        mode="continuous", cooldown_minutes=0.0, max_iterations=5, plateau_window=100,
        oscillation_window=0, dry_run=True, estimated_cost_usd=0.1,
    )  # fmt: skip
    for sub in ("runs", "learner"):
        (target.state_root / sub).mkdir(parents=True)
    target.path.mkdir()
    store = FileTargetStore(target)
    runner = TargetRunner(target, store=store, budget=budget, slots=slots, events=ev.EventBus())
    await runner.prepare()
    waits = Waits(runner)
    with anyio.fail_after(10):
        assert await waits.slot()
        served_s = waits.served_s
        reservation = await waits.reserve_in_turn()
    assert isinstance(reservation, Reservation)
    assert anyio.current_time() > served_s + 0.01  # it did wait for the window
    assert waits.served_s == served_s
    budget.settle(reservation, 0.0)
    slots.release()
    await store.close()
