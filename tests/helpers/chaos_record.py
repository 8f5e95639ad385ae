"""The runs of the recording fake orchestrator (tests/fakes/chaos_orchestrator.py), read back
from its shared record file, and how long two runs of one target ran at the same time.

Times are CLOCK_MONOTONIC seconds (`time.monotonic()`: one clock for every process of the
machine), so the test's own moments (a crash, a freeze, a thaw) compare with the runs'.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

Interval = tuple[float, float]


@dataclass(slots=True)
class Run:
    """One orchestrator run as recorded: `end` and `how` stay None when it was SIGKILLed."""

    target: str
    iteration: int
    host: str
    token: int
    pid: int
    start: float
    end: float | None = None
    how: str | None = None  # "finished" or "terminated"
    cost_usd: float | None = None
    frozen: list[Interval] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, int, str, int]:
        """(target, iteration, host, token): what the iterations table says of a record."""
        return (self.target, self.iteration, self.host, self.token)

    def describe(self) -> str:
        """One line for an assertion message."""
        end = "killed" if self.end is None else f"{self.end:.3f} ({self.how})"
        return (
            f"{self.target}#{self.iteration} on {self.host} token {self.token} pid {self.pid}: "
            f"{self.start:.3f} -> {end}"
        )


def read_runs(path: Path) -> list[Run]:
    """Every run in the record file, in the order they started (a start line and the end
    line of the same pid, target and iteration make one run)."""
    runs: list[Run] = []
    open_runs: dict[tuple[int, str, int], Run] = {}
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        item = json.loads(line)
        key = (int(item["pid"]), str(item["target"]), int(item["iteration"]))
        if item["event"] == "start":
            run = Run(
                target=str(item["target"]),
                iteration=int(item["iteration"]),
                host=str(item["host"]),
                token=int(item["token"]),
                pid=int(item["pid"]),
                start=float(item["mono"]),
            )
            open_runs[key] = run
            runs.append(run)
        else:
            run = open_runs.pop(key)
            run.end, run.how = float(item["mono"]), str(item["how"])
            if item.get("cost_usd") is not None:
                run.cost_usd = float(item["cost_usd"])
    return runs


def active(run: Run, until: float | None = None) -> list[Interval]:
    """When the run was really running: from its start to its end (`until` for a run that
    never wrote one: it was killed then), less the times it was frozen."""
    end = run.end if run.end is not None else until
    if end is None:
        raise AssertionError(f"a run never ended and was not killed: {run.describe()}")
    pieces = [(run.start, end)]
    for lo, hi in run.frozen:
        pieces = [p for a, b in pieces for p in ((a, min(b, lo)), (max(a, hi), b)) if p[1] > p[0]]
    return pieces


def common(a: Iterable[Interval], b: Sequence[Interval]) -> list[Interval]:
    """The intervals in both sets of intervals."""
    both = ((max(a0, b0), min(a1, b1)) for a0, a1 in a for b0, b1 in b)
    return [(lo, hi) for lo, hi in both if hi > lo]


@dataclass(frozen=True, slots=True)
class Overlap:
    """Two runs of one target that ran at the same time: when, and for how long."""

    first: Run
    second: Run
    spans: tuple[Interval, ...]

    @property
    def seconds(self) -> float:
        """How long both ran."""
        return sum(hi - lo for lo, hi in self.spans)

    def describe(self) -> str:
        """One line for an assertion message."""
        return f"{self.seconds:.3f} s: {self.first.describe()} | {self.second.describe()}"


def overlaps(runs: Sequence[Run], killed_at: Mapping[str, float]) -> list[Overlap]:
    """Every pair of runs of one target that were running at the same time (`killed_at`:
    when each crashed host was killed, the end of its runs without an end line)."""
    found = []
    by_target: dict[str, list[Run]] = {}
    for run in runs:
        by_target.setdefault(run.target, []).append(run)
    for target_runs in by_target.values():
        spans = [active(r, killed_at.get(r.host)) for r in target_runs]
        for i, first in enumerate(target_runs):
            for j in range(i + 1, len(target_runs)):
                both = common(spans[i], spans[j])
                if both:
                    found.append(Overlap(first, target_runs[j], tuple(both)))
    return found
