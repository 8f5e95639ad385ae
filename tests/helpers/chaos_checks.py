"""What must hold after a chaos scenario (tests/helpers/chaos.py), and its figures.

`check(lab, outcome)` reads the database and the recorded runs and returns the `Figures`
(for bench/chaos.py and the closing note) with every invariant that failed in `problems`;
`assert_holds` fails a test with all of them at once. The invariants:

- every host exits by itself, 0 (a crashed host: killed); every target finished
  `stopped_max_iter` with exactly its `max_iterations` completed iterations, numbered
  1..n with no gap and none twice (the primary key; and in the runs: each recorded
  iteration matches exactly one run, by host and fencing token, and a completed one
  reported the recorded cost; an interrupted one may match none: a run stopped within
  the fake's start-up never wrote its start line);
- no two runs of one target ran at the same time, except a frozen host's run once it was
  thawed, for at most the documented margin (`overlap_margin_s`);
- the money, exactly (Decimal): spent = sum of settled + late_settled + expired
  reservations' charges + sum of charges; the reservation of each recorded run is settled
  (or late_settled) at its recorded cost, so spent = sum of the recorded costs + what the
  runs that were not recorded were charged + charges; nothing stays reserved; a run
  whose result was fenced was charged what its host journaled for it (late_settled: the
  reported cost, or for a run cut short its wall time at the rate), a run killed with its
  host what the takeover charged (expired); the cap held (spent <= cap + what runs cost
  beyond their reservations);
- every lease of the crashed or frozen host moved: its targets were completed by other
  hosts, and at the end no lease is the crashed host's.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from tests.helpers.chaos import ChaosLab, Outcome, overlap_margin_s
from tests.helpers.chaos_record import Run, overlaps


def money(value: float) -> Decimal:
    """A float the way the daemon books it (the decimal of its shortest repr)."""
    return Decimal(repr(float(value)))


@dataclass
class Figures:
    """One scenario's figures (JSON-ready but for `problems`, a list of strings)."""

    scenario: str
    victim: str | None
    runs: int = 0
    iterations: int = 0
    reruns: int = 0  # (target, iteration) started more than once
    runs_killed: int = 0
    runs_terminated: int = 0
    runs_caught_in_flight: int = 0
    stopped_before_start: int = 0  # recorded interrupted, its run stopped before its first line
    takeover_s: float | None = None  # the event to the last of the victim's leases moving
    takeover_by_target_s: dict[str, float] = field(default_factory=dict)
    first_rerun_s: float | None = None  # the event to a run of its targets elsewhere
    outage_s: float | None = None  # the database's stop to its start again
    runs_died_after_s: float | None = None  # crash_alone: the kill to its runs all gone
    max_overlap_s: float = 0.0
    margin_s: float = 0.0
    spent_usd: str = "0"
    sum_of_charges_usd: str = "0"
    recorded_cost_usd: str = "0"
    unrecorded_runs_charged_usd: str = "0"
    reserved_usd: str = "0"
    cap_usd: str = "0"
    expired: int = 0
    expired_charged_usd: str = "0"
    fenced_late_writes: int = 0
    fenced_writes_logged: int = 0
    self_fences_logged: int = 0
    pushes_deferred_logged: int = 0
    exit_codes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The figures as a dict."""
        return asdict(self)


def _logged(lab: ChaosLab, event: str) -> int:
    return sum(len(daemon.events(event)) for daemon in lab.daemons.values())


def check(lab: ChaosLab, outcome: Outcome) -> Figures:
    """The figures of `outcome`, with every failed invariant in `problems`."""
    fig = Figures(outcome.scenario, outcome.victim, exit_codes=dict(outcome.exit_codes))
    runs = outcome.runs
    fig.runs = len(runs)
    fig.runs_killed = sum(1 for r in runs if r.end is None)
    fig.runs_terminated = sum(1 for r in runs if r.how == "terminated")
    fig.runs_caught_in_flight = outcome.frozen_runs
    fig.reruns = sum(1 for n in Counter((r.target, r.iteration) for r in runs).values() if n > 1)
    if outcome.resumed_at is not None and outcome.scenario == "db_restart":
        fig.outage_s = round(outcome.resumed_at - outcome.event_at, 3)
    if outcome.resumed_at is not None and outcome.scenario == "crash_alone":
        fig.runs_died_after_s = round(outcome.resumed_at - outcome.event_at, 3)
    fig.fenced_writes_logged = _logged(lab, "cluster_write_fenced")
    fig.self_fences_logged = _logged(lab, "cluster_self_fence")
    fig.pushes_deferred_logged = _logged(lab, "cluster_push_deferred")
    _check_exits(outcome, fig)
    accepted = _check_iterations(lab, runs, fig)
    _check_overlaps(outcome, fig)
    _check_money(lab, outcome, accepted, fig)
    _check_leases(lab, outcome, accepted, fig)
    return fig


def assert_holds(fig: Figures) -> None:
    """Fail with every problem found."""
    assert not fig.problems, f"{fig.scenario}: " + "\n".join(fig.problems)


def _check_exits(outcome: Outcome, fig: Figures) -> None:
    for host, code in sorted(outcome.exit_codes.items()):
        crashed = outcome.scenario in ("crash", "crash_alone") and host == outcome.victim
        if code != (-9 if crashed else 0):
            fig.problems.append(f"host {host} exited {code}")


Key = tuple[str, int, str, int]


def _check_iterations(lab: ChaosLab, runs: list[Run], fig: Figures) -> dict[Key, Decimal]:
    """The recorded iterations, checked, as {the key of the run recorded: its cost}.

    The run recorded for (target, iteration) must be the only run of it by the recorded host
    under a token up to the recorded one: a host that fenced itself (its database was away)
    and claimed the target again pushes what it journaled meanwhile under its new token."""
    rows = lab.sql(
        """SELECT target, iteration, host, fencing_token, cost_usd, entry->>'status'
           FROM iterations ORDER BY target, iteration"""
    )
    fig.iterations = len(rows)
    for name in lab.names:
        numbers = [i for t, i, *_ in rows if t == name]
        completed = [i for t, i, *_, status in rows if t == name and status == "completed"]
        if numbers != list(range(1, len(numbers) + 1)) or len(completed) != lab.iterations:
            fig.problems.append(f"{name}: iterations {numbers}, completed {completed}")
    finished = lab.sql("SELECT name, finished_status FROM targets ORDER BY name")
    for name, status in finished:
        if status != "stopped_max_iter":
            fig.problems.append(f"{name}: finished_status {status}")
    accepted: dict[Key, Decimal] = {}
    for target, iteration, host, token, cost, status in rows:
        matches = [r for r in runs if r.key[:3] == (target, iteration, host) and r.token <= token]
        if not matches and status == "interrupted":
            # Stopped (a lost lease) within the fake's interpreter start-up, before it could
            # write its start line: its reservation is checked with the unrecorded runs'.
            fig.stopped_before_start += 1
            continue
        if len(matches) != 1:
            fig.problems.append(
                f"{target}#{iteration}: recorded from {host} token {token}, "
                f"matching {len(matches)} runs: {[r.describe() for r in matches]}"
            )
            continue
        run = matches[0]
        accepted[run.key] = cost
        if status == "completed" and (run.cost_usd is None or money(run.cost_usd) != cost):
            fig.problems.append(f"recorded cost {cost} != the run's: {run.describe()}")
    return accepted


def _check_overlaps(outcome: Outcome, fig: Figures) -> None:
    """Two runs of one target at once only when one is the thawed host's, and only within
    the margin after the thaw (a run in flight at the freeze goes on; one whose
    reservation was made before the freeze may even start: both are stopped when the
    host's first renewal finds its lease gone)."""
    margin = overlap_margin_s()
    fig.margin_s = margin
    for found in overlaps(outcome.runs, outcome.killed_at):
        fig.max_overlap_s = max(fig.max_overlap_s, round(found.seconds, 3))
        thawed = outcome.scenario == "freeze" and outcome.victim in (
            found.first.host,
            found.second.host,
        )
        if not thawed:
            fig.problems.append(f"two runs at once: {found.describe()}")
            continue
        assert outcome.resumed_at is not None
        window = (outcome.resumed_at, outcome.resumed_at + margin)
        if any(lo < window[0] or hi > window[1] for lo, hi in found.spans):
            fig.problems.append(
                f"a thawed host's run beside another beyond the margin of {margin} s after "
                f"the thaw at {window[0]:.3f}: {found.describe()}"
            )


def _check_money(
    lab: ChaosLab, outcome: Outcome, accepted: dict[Key, Decimal], fig: Figures
) -> None:
    runs = outcome.runs
    ((cap, spent, reserved),) = lab.sql("SELECT cap_usd, spent_usd, reserved_usd FROM budgets")
    reservations = lab.sql(
        """SELECT target, iteration, host, fencing_token, state, amount_usd, charged_usd
           FROM reservations"""
    )
    ((charges,),) = lab.sql("SELECT coalesce(sum(amount_usd), 0) FROM charges")
    by_state: dict[str, Decimal] = {}
    for *_, state, amount, charged in reservations:
        by_state[state] = by_state.get(state, Decimal(0)) + (amount if state == "open" else charged)
    total = sum((by_state.get(s, Decimal(0)) for s in ("settled", "late_settled", "expired")),
                Decimal(0)) + charges  # fmt: skip
    fig.spent_usd, fig.sum_of_charges_usd = str(spent), str(total)
    fig.reserved_usd, fig.cap_usd = str(reserved), str(cap)
    fig.recorded_cost_usd = str(sum(accepted.values(), Decimal(0)))
    fig.expired = sum(1 for r in reservations if r[4] == "expired")
    fig.expired_charged_usd = str(by_state.get("expired", Decimal(0)))
    fig.fenced_late_writes = sum(1 for r in reservations if r[4] == "late_settled")
    if spent != total:
        fig.problems.append(f"spent {spent} != sum of charges {total} ({by_state}, {charges})")
    if reserved != by_state.get("open", Decimal(0)) or reserved != 0:
        fig.problems.append(f"reserved {reserved}, open reservations {by_state.get('open')}")
    states = {(t, i, h, int(tok)): (s, c) for t, i, h, tok, s, _, c in reservations}
    for key, cost in accepted.items():
        if states.get(key) not in (("settled", cost), ("late_settled", cost)):
            fig.problems.append(f"{key} recorded at {cost}: its reservation is {states.get(key)}")
    others = sum((c for k, (s, c) in states.items() if k not in accepted and s != "open"),
                 Decimal(0))  # fmt: skip
    fig.unrecorded_runs_charged_usd = str(others)
    if spent != sum(accepted.values(), Decimal(0)) + others + charges:
        fig.problems.append(f"spent {spent} != recorded {fig.recorded_cost_usd} + {others}")
    beyond = sum((max(Decimal(0), c - a) for *_, a, c in reservations), Decimal(0))
    if spent > cap + beyond:
        fig.problems.append(f"spent {spent} > cap {cap} + {beyond} beyond reservations")
    journaled = _journaled_costs(lab, runs)
    for run in runs:
        if run.key in accepted:
            continue
        state, charged = states.get(run.key, (None, None))
        crashed = outcome.scenario in ("crash", "crash_alone") and run.host == outcome.victim
        if state not in ("expired", "late_settled"):
            fig.problems.append(f"a run not recorded has reservation {state}: {run.describe()}")
        elif state == "expired" and run.how is not None and not crashed:
            fig.problems.append(f"a fenced run that ended was never booked: {run.describe()}")
        elif state == "late_settled" and charged not in journaled.get(run.key, ()):
            fig.problems.append(
                f"a fenced run was charged {charged}, not a cost its host journaled for it "
                f"({sorted(journaled.get(run.key, ()))}): {run.describe()}"
            )


def _journaled_costs(lab: ChaosLab, runs: list[Run]) -> dict[Key, set[Decimal]]:
    """The costs each host's journals (the iteration log and the copies kept when the
    cluster's log replaced it) hold for each run's target and iteration: what the host
    pushed, or tried to, for a run it recorded."""
    found: dict[Key, set[Decimal]] = {}
    for run in runs:
        root = lab.state_dir(run.host) / run.target
        for path in root.glob("iteration_log*.jsonl"):
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if entry["iteration"] == run.iteration:
                    found.setdefault(run.key, set()).add(money(entry["cost_usd"]))
    return found


def _check_leases(
    lab: ChaosLab, outcome: Outcome, accepted: dict[Key, Decimal], fig: Figures
) -> None:
    victim = outcome.victim
    if victim is None:
        return
    if outcome.moved_after_s:
        fig.takeover_by_target_s = {k: round(v, 3) for k, v in outcome.moved_after_s.items()}
        fig.takeover_s = max(fig.takeover_by_target_s.values())
    later = [r for r in outcome.runs if r.host != victim and r.start > outcome.event_at]
    firsts = [min(r.start for r in later if r.target == n) for n in outcome.victim_targets
              if any(r.target == n for r in later)]  # fmt: skip
    if firsts:
        fig.first_rerun_s = round(min(firsts) - outcome.event_at, 3)
    if not outcome.victim_targets:
        fig.problems.append(f"{victim} held no lease at the {outcome.scenario}")
    for name in outcome.victim_targets:
        elsewhere = [r for r in later if r.target == name and r.key in accepted]
        if not elsewhere:
            fig.problems.append(f"{name}: no iteration of it recorded elsewhere after the event")
    if outcome.scenario in ("crash", "crash_alone"):
        held = lab.sql("SELECT name FROM targets WHERE lease_holder = %s", (victim,))
        if held:
            fig.problems.append(f"leases still held by the crashed {victim}: {held}")
