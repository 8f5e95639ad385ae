"""The one reader of what the daemon writes as JSON lines: its structlog output (JSON when
not on a terminal) and a state root's iteration_log.jsonl."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOG_NAME = "iteration_log.jsonl"


def json_lines(text: str, *, strict: bool = False) -> list[dict[str, Any]]:
    """The JSON objects among the lines of `text`, in order.

    Lenient (default): other lines (plain prints, a line still being written) are skipped.
    `strict`: every line must be one JSON object (ValueError otherwise).
    """
    records = []
    for line in text.splitlines():
        if not strict and not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            if strict:
                raise ValueError(f"not a JSON line: {line!r}") from exc
            continue
        if not isinstance(record, dict):
            if strict:
                raise ValueError(f"not a JSON object: {line!r}")
            continue
        records.append(record)
    return records


def read_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines in the file `path` (none when it is missing); other lines and a
    last line not yet ended are skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return json_lines(data[: data.rfind(b"\n") + 1].decode("utf-8", "replace"))


def matching(
    records: Iterable[Mapping[str, Any]], event: str | None = None, **match: Any
) -> list[dict[str, Any]]:
    """The records of `event` (any when None) whose fields equal `match`, in order."""
    return [
        dict(r)
        for r in records
        if (event is None or r.get("event") == event)
        and all(r.get(k) == v for k, v in match.items())
    ]


class EventLog:
    """The JSON log lines of a file that a running daemon appends to, read incrementally:
    each `refresh()` parses only the lines completed since the last one."""

    def __init__(self, path: Path) -> None:
        """Follow `path` (it may not exist yet)."""
        self.path = path
        self.records: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self._offset = 0

    def refresh(self) -> list[dict[str, Any]]:
        """Read what was appended since the last call; returns every record so far."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return self.records
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for record in json_lines(complete.decode("utf-8", "replace")):
            self.records.append(record)
            self.counts[str(record.get("event"))] += 1
        return self.records

    def count(self, event: str) -> int:
        """How many `event` lines were read so far (call `refresh()` first)."""
        return self.counts[event]


def parse_ts(text: str) -> datetime:
    """An ISO 8601 timestamp (log `timestamp`, state `next_run_at`) as an aware datetime."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def epoch_s(text: str) -> float:
    """An ISO 8601 timestamp as seconds since the epoch (time.time()'s clock)."""
    return parse_ts(text).timestamp()


def max_overlap(events: Sequence[Mapping[str, Any]]) -> int:
    """The most iterations running at once, from the order of their started/finished events.

    An iteration is counted from its `iteration_started` to its `iteration_finished` line;
    both are logged while it holds its concurrency slot, so this never over-counts.
    """
    running: set[tuple[str, int]] = set()
    most = 0
    for record in events:
        key = (str(record.get("target")), int(record.get("iteration", 0)))
        if record.get("event") == "iteration_started":
            running.add(key)
            most = max(most, len(running))
        elif record.get("event") == "iteration_finished":
            running.discard(key)
    return most


# --------------------------------------------------------------------------- iteration log


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON Lines file (a fake's --record file, say); [] when it is missing."""
    if not path.exists():
        return []
    return json_lines(path.read_text(encoding="utf-8"), strict=True)


def read_log(state_root: Path) -> list[dict[str, Any]]:
    """The decoded lines of iteration_log.jsonl (asserting each line is whole JSON)."""
    path = state_root / LOG_NAME
    if not path.exists():
        return []
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), f"{path}: torn last line"
    # Split on \n only: a value may hold U+2028 and friends, which splitlines() splits on.
    return [json.loads(line) for line in raw.decode().split("\n")[:-1]]


def logged_cost(state_root: Path) -> float:
    """The sum of the costs in a state root's iteration log."""
    return math.fsum(entry["cost_usd"] for entry in read_log(state_root))
