"""Prometheus metrics: counters fed by events, gauges read from the snapshot at scrape time.

One `Metrics` per daemon owns its own `CollectorRegistry` (never the process-global one, so
tests and several supervisors in one process do not collide). `Metrics` subscribes to the
supervisor's events for what only events know (iterations, cost, durations); everything
that is a current value (status, scores, budget, running) comes from the same
`FleetSnapshot` that `status` and STATUS= render, collected when `/metrics` is scraped.

The event counters are plain dicts rendered as metric families at scrape time, the same
text as prometheus_client's `Counter` and `Histogram` would write: those keep an object, a
value object and a lock per label set and per bucket, ~5 kB per target (5 MB of the
daemon's memory at 1,000 targets, issue 24); these keep ~0.3 kB. Events and scrapes both
run on the event loop's thread, so no lock is needed.
"""

from __future__ import annotations

import itertools
import math
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from autoloop_daemon.clock import parse_iso
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.snapshot import FleetSnapshot
from autoloop_daemon.vocab import Phase, TargetStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATUSES: tuple[str, ...] = (*(s.value for s in TargetStatus), Phase.NOT_STARTED, Phase.LOADING)
DURATION_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, math.inf)
# The `le` labels, "1.0" .. "+Inf", as prometheus_client's Histogram writes them.
_LE = tuple(floatToGoString(b) for b in DURATION_BUCKETS_S)  # type: ignore[no-untyped-call]


class _EventCounts(Collector):
    """The counters and the duration histogram that events feed, by label values."""

    def __init__(self) -> None:
        self.iterations: dict[tuple[str, str, str], float] = {}
        self.cost: dict[tuple[str, str], float] = {}
        # Per target: the count of each bucket (not cumulative), then the sum of durations.
        self.durations: dict[str, array[float]] = {}
        self.commands: dict[tuple[str, str], float] = {}

    def observe(self, target: str, seconds: float) -> None:
        """One iteration of `target` that took `seconds`."""
        counts = self.durations.get(target)
        if counts is None:
            counts = self.durations[target] = array("d", bytes(8 * (len(_LE) + 1)))
        counts[bisect_left(DURATION_BUCKETS_S, seconds)] += 1  # the first bound >= seconds
        counts[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        """The four families, each label set in the order it first appeared."""
        yield _counter(
            "autoloopd_iterations",
            "Iterations recorded, by target, run status and decision",
            ["target", "status", "decision"],
            self.iterations.items(),
        )
        yield _counter(
            "autoloopd_cost_usd",
            "Money booked by iterations, by target and cost source (reported | estimated)",
            ["target", "source"],
            self.cost.items(),
        )
        duration = HistogramMetricFamily(
            "autoloopd_iteration_duration_seconds", "Wall time of an iteration", labels=["target"]
        )
        for target, counts in self.durations.items():
            cumulative = itertools.accumulate(counts[:-1])
            duration.add_metric([target], list(zip(_LE, cumulative, strict=True)), counts[-1])
        yield duration
        yield _counter(
            "autoloopd_operator_commands",
            "Operator commands on targets (ctl, API, dashboard), by verb and outcome",
            ["verb", "outcome"],
            self.commands.items(),
        )


def _counter(
    name: str, doc: str, labels: list[str], values: Iterable[tuple[Sequence[str], float]]
) -> CounterMetricFamily:
    """A counter family with one sample per (label values, value)."""
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in values:
        family.add_metric(key, value)
    return family


class _SnapshotCollector(Collector):
    """Gauges rendered from a fresh snapshot on each scrape."""

    def __init__(self, snapshot: Callable[[], FleetSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        budget = snap.budget
        ready = GaugeMetricFamily("autoloopd_ready", "1 once every target was recovered")
        ready.add_metric([], 1.0 if snap.ready and not snap.shutting_down else 0.0)
        yield ready
        spent = GaugeMetricFamily("autoloopd_budget_spent_usd", "Money spent from the budget")
        spent.add_metric([], budget.spent_usd)
        yield spent
        reserved = GaugeMetricFamily(
            "autoloopd_budget_reserved_usd", "Money reserved by running iterations"
        )
        reserved.add_metric([], budget.reserved_usd)
        yield reserved
        if budget.cap_usd is not None:
            cap = GaugeMetricFamily("autoloopd_budget_cap_usd", "The shared budget cap")
            cap.add_metric([], budget.cap_usd)
            yield cap
            left = GaugeMetricFamily(
                "autoloopd_budget_remaining_usd", "Cap minus spent (never below 0)"
            )
            left.add_metric([], max(0.0, budget.cap_usd - budget.spent_usd))
            yield left
        yield from _window_metrics(snap)
        yield from _target_metrics(snap)
        yield from _cluster_metrics(snap)


class Metrics:
    """The daemon's metrics; call it with events (an EventBus subscriber)."""

    def __init__(self, snapshot: Callable[[], FleetSnapshot]) -> None:
        """Register every metric in a registry of its own."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._counts = _EventCounts()
        self.registry.register(self._counts)
        self.registry.register(_SnapshotCollector(snapshot))

    def __call__(self, event: ev.Event) -> None:
        """Count a recorded iteration or an operator command (the event subscriber)."""
        counts = self._counts
        if isinstance(event, ev.OperatorCommand):
            key = (event.action.verb, event.action.outcome)
            counts.commands[key] = counts.commands.get(key, 0.0) + 1
            return
        if not isinstance(event, ev.IterationFinished):
            return
        entry = event.entry
        run = (event.target, entry.status, entry.decision or "none")
        counts.iterations[run] = counts.iterations.get(run, 0.0) + 1
        if entry.cost_usd > 0:
            source = (event.target, entry.cost_source or "reported")
            counts.cost[source] = counts.cost.get(source, 0.0) + entry.cost_usd
        counts.observe(event.target, max(0.0, entry.duration_seconds))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


def _target_metrics(snap: FleetSnapshot) -> Iterator[Metric]:
    """Each target's status, scores, pause and cost; the running and queued iterations."""
    status = GaugeMetricFamily(
        "autoloopd_target_status",
        "1 for the target's current status",
        labels=["target", "status"],
    )
    best = GaugeMetricFamily(
        "autoloopd_target_best_weighted_score", "Best weighted score", labels=["target"]
    )
    last = GaugeMetricFamily(
        "autoloopd_target_last_weighted_score", "Last weighted score", labels=["target"]
    )
    paused = GaugeMetricFamily("autoloopd_target_paused", "1 while paused", labels=["target"])
    cost = GaugeMetricFamily(
        "autoloopd_target_cost_usd", "The target's total cost so far", labels=["target"]
    )
    running = 0
    for t in snap.targets:
        for name in STATUSES:
            status.add_metric([t.target, name], 1.0 if t.status == name else 0.0)
        if t.best_weighted_score is not None:
            best.add_metric([t.target], t.best_weighted_score)
        if t.last_weighted_score is not None:
            last.add_metric([t.target], t.last_weighted_score)
        paused.add_metric([t.target], 1.0 if t.paused else 0.0)
        cost.add_metric([t.target], t.total_cost_usd)
        running += t.running_iteration is not None
    yield from (status, best, last, paused, cost)
    run = GaugeMetricFamily("autoloopd_iterations_running", "Iterations running now")
    run.add_metric([], float(running))
    yield run
    queued = GaugeMetricFamily(
        "autoloopd_iterations_queued",
        "Targets ready to run but waiting for a concurrency slot",
    )
    queued.add_metric([], float(snap.queued))
    yield queued


def _window_metrics(snap: FleetSnapshot) -> Iterator[Metric]:
    """The budget window's spending, cap and reset time (nothing without a window)."""
    b = snap.budget
    if b.window is None or b.window_cap_usd is None or b.window_spent_usd is None:
        return
    spent = GaugeMetricFamily(
        "autoloopd_budget_window_spent_usd", "Money charged to the current budget window",
        labels=["window"],
    )  # fmt: skip
    spent.add_metric([b.window], b.window_spent_usd)
    yield spent
    cap = GaugeMetricFamily(
        "autoloopd_budget_window_cap_usd", "The cap per budget window", labels=["window"]
    )
    cap.add_metric([b.window], b.window_cap_usd)
    yield cap
    resets = parse_iso(b.window_resets_at)
    if resets is not None:
        reset = GaugeMetricFamily(
            "autoloopd_budget_window_resets_timestamp_seconds",
            "When the next budget window opens (Unix time)",
            labels=["window"],
        )
        reset.add_metric([b.window], resets.timestamp())
        yield reset


def _cluster_metrics(snap: FleetSnapshot) -> Iterator[Metric]:
    """Cluster mode: this host's lease freshness, every host's liveness and leases, and
    which host runs each target (none without a cluster)."""
    cluster = snap.cluster
    if cluster is None:
        return
    fresh = GaugeMetricFamily(
        "autoloopd_cluster_leases_fresh", "1 while this host's leases are known good"
    )
    fresh.add_metric([], 1.0 if cluster.leases_fresh else 0.0)
    yield fresh
    live = GaugeMetricFamily(
        "autoloopd_cluster_host_live", "1 when the host renewed within a lease", labels=["host"]
    )
    leases = GaugeMetricFamily(
        "autoloopd_cluster_host_leases", "Leases the host holds", labels=["host"]
    )
    for host in cluster.hosts:
        live.add_metric([host.host], 1.0 if host.live else 0.0)
        leases.add_metric([host.host], float(host.leases))
    yield live
    yield leases
    where = GaugeMetricFamily(
        "autoloopd_cluster_target_host",
        "1 for the host running the target",
        labels=["target", "host"],
    )
    for t in snap.targets:
        if t.host is not None:
            where.add_metric([t.target, t.host], 1.0)
    yield where
