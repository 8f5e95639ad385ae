"""The event-fed metrics write the same text as prometheus_client's own `Counter` and
`Histogram` would (the daemon keeps them in plain dicts instead: ~5 kB less per target,
issue 24), each label set once and in the order it first appeared."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.snapshot import BudgetSnapshot, FleetSnapshot
from autoloop_daemon.models import LogEntry
from autoloop_daemon.observers.metrics import DURATION_BUCKETS_S, Metrics
from autoloop_daemon.operator_action import Caller, OperatorAction
from autoloop_daemon.vocab import RunStatus

AT = "2027-01-15T08:00:00Z"
# (target, status, decision, cost, cost source, seconds): bucket bounds, 0, over 7200 s.
RUNS = [
    ("b", RunStatus.COMPLETED, "keep", 0.25, "reported", 1.0),
    ("a", RunStatus.COMPLETED, None, 0.0, None, 0.0),
    ("b", RunStatus.FAILED, None, 0.01, "estimated", 3600.5),
    ("b", RunStatus.COMPLETED, "keep", 0.5, "reported", 7200.0),
    ("a", RunStatus.COMPLETED, "discard", 0.125, None, 9000.0),
    ("b", RunStatus.COMPLETED, "keep", 0.0, "reported", 4.999),
]
COMMANDS = [("pause", "ok"), ("resume", "refused"), ("pause", "ok")]


def _reference() -> str:
    """The same events counted by prometheus_client's metric objects."""
    registry = CollectorRegistry(auto_describe=True)
    iterations = Counter(
        "autoloopd_iterations",
        "Iterations recorded, by target, run status and decision",
        ["target", "status", "decision"],
        registry=registry,
    )
    cost = Counter(
        "autoloopd_cost_usd",
        "Money booked by iterations, by target and cost source (reported | estimated)",
        ["target", "source"],
        registry=registry,
    )
    duration = Histogram(
        "autoloopd_iteration_duration_seconds",
        "Wall time of an iteration",
        ["target"],
        buckets=DURATION_BUCKETS_S,
        registry=registry,
    )
    commands = Counter(
        "autoloopd_operator_commands",
        "Operator commands on targets (ctl, API, dashboard), by verb and outcome",
        ["verb", "outcome"],
        registry=registry,
    )
    for target, status, decision, usd, source, seconds in RUNS:
        iterations.labels(target, status, decision or "none").inc()
        if usd > 0:
            cost.labels(target, source or "reported").inc(usd)
        duration.labels(target).observe(seconds)
    for verb, outcome in COMMANDS:
        commands.labels(verb, outcome).inc()
    text = generate_latest(registry).decode()
    # The daemon never wrote `_created` series (it disabled them process-wide).
    return "".join(line + "\n" for line in text.splitlines() if "_created" not in line)


def test_event_counters_and_histogram_render_as_prometheus_client_would() -> None:
    """Iterations, cost, durations (on bucket bounds, 0 and beyond the last bound) and
    operator commands render byte for byte as prometheus_client's metrics of the same
    events, before the snapshot's gauges."""
    snap = FleetSnapshot(1, "x", True, False, BudgetSnapshot(0.0, 0.0, None), (), queued=0)
    metrics = Metrics(lambda: snap)
    for target, status, decision, usd, source, seconds in RUNS:
        entry = LogEntry(1, AT, AT, status, decision, None, usd, seconds, cost_source=source)
        metrics(ev.IterationFinished(target, entry, total_cost_usd=usd))
    for verb, outcome in COMMANDS:
        metrics(ev.OperatorCommand(OperatorAction(verb, "a", Caller("socket"), AT, {}, outcome)))
    text = metrics.render().decode()
    expected = _reference()
    assert text.startswith(expected), f"{text[: len(expected)]}\n!=\n{expected}"
    assert 'autoloopd_iteration_duration_seconds_bucket{le="+Inf",target="a"} 2.0' in text
