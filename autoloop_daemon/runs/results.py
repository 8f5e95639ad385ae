"""Reading what an orchestrator or scorer printed: pure functions of text, no I/O.

An orchestrator reports its verdict in one of two ways (DESIGN.md, "The orchestrator contract"):

1. a JSON object on one stdout line, with `decision` (or `final_decision`) and optional
   `candidate_id`, `artifact_path`, `attempts`, `scores`, `weighted_score`, `cost_usd`;
2. improvement-orchestrator's text block, `Pipeline Summary:` followed by indented
   `Key: value` lines.

The last JSON result line wins over any text block; among several candidates the last one
wins. Output that is present but malformed raises `ResultError` with a message that starts
with the offending field, so the iteration log says exactly what was wrong.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from autoloop_daemon.exceptions import ResultError
from autoloop_daemon.models import MAX_RUN_COST_USD

__all__ = [
    "ParsedResult",
    "parse_result",
    "parse_scorer_output",
    "scores_from_json",
    "tail_text",
]

_SUMMARY_HEADER = "pipeline summary:"
_SUMMARY_LINE = re.compile(r"^\s+(?P<key>[A-Za-z][A-Za-z _-]*?)\s*:\s*(?P<value>.*?)\s*$")
_ATTEMPTS = re.compile(r"^(?P<n>\d+)\s*(?:/\s*\d+)?$")
_NONE_WORDS = frozenset({"", "none", "null", "-", "n/a"})
_SCORER_KEYS = ("final_scores", "dimensions")


@dataclass(frozen=True, slots=True)
class ParsedResult:
    """An orchestrator's verdict on one iteration, as read from its stdout.

    `decision` is the orchestrator's word, stripped and lower-cased: keep, reject, revert,
    pending, pending_promote, no_candidates, no_accepted_candidates, or any other word a
    newer orchestrator prints (recorded verbatim). Every other field is None when the
    orchestrator did not report it; `scores` is None rather than empty. `attempts` is
    informational: a value that is not a count is dropped, never an error.
    """

    decision: str
    candidate_id: str | None
    artifact_path: str | None
    attempts: int | None
    scores: dict[str, float] | None
    weighted_score: float | None
    cost_usd: float | None


def parse_result(stdout_text: str) -> ParsedResult | None:
    """Read the orchestrator's result from its stdout, or None when it printed none.

    The last line that is a JSON object holding `decision` or `final_decision` wins; failing
    that, the last `Pipeline Summary:` block that has a `Final Decision:`. Lines that are not
    valid JSON are ignored. Raises `ResultError` (message starting with the field name) when
    the chosen result has an invalid field; an earlier, valid result is not used instead.
    """
    for line in _lines_reversed(stdout_text):
        obj = _json_object_line(line)
        if obj is not None and ("decision" in obj or "final_decision" in obj):
            return _result_from_json(obj)
    return _result_from_summary(stdout_text)


def parse_scorer_output(text: str) -> dict[str, float]:
    """Read dimension scores from improvement-learner's stdout.

    The JSON may be the whole output (pretty-printed or not), a JSON object that ends the
    output after some log lines, or the last JSON-object line. It must hold `final_scores`
    (or the older `dimensions`): see `scores_from_json`. Raises `ResultError`.
    """
    first_object: dict[str, Any] | None = None
    for obj in _scorer_candidates(text):
        if any(obj.get(key) is not None for key in _SCORER_KEYS):
            return scores_from_json(obj)
        if first_object is None:
            first_object = obj
    if first_object is None:
        raise ResultError("scorer output: no JSON object found")
    return scores_from_json(first_object)  # raises, naming the missing key


def scores_from_json(obj: Any) -> dict[str, float]:
    """Dimension scores from a decoded scorer document (e.g. a `learner/*.json` file).

    Takes `final_scores`, else `dimensions`: an object mapping each dimension to a number or
    to `{"score": number}`, each finite and within 0..1. Raises `ResultError` naming the field.
    """
    if not isinstance(obj, dict):
        raise ResultError(f"scorer output: not a JSON object: {_short(obj)}")
    for key in _SCORER_KEYS:
        value = obj.get(key)
        if value is not None:
            return _scores(value, key)
    raise ResultError("final_scores: missing (and no older 'dimensions' either)")


def tail_text(data: bytes, limit: int = 65536) -> str:
    """Decode the last `limit` bytes of `data` as UTF-8, replacing what does not decode.

    A multi-byte character cut in half by the limit is dropped rather than shown as a
    replacement character.
    """
    if limit <= 0:
        return ""
    chunk = bytes(data[-limit:])
    if len(data) > limit:
        # Skip up to three UTF-8 continuation bytes orphaned by the cut.
        skip = 0
        while skip < 3 and skip < len(chunk) and 0x80 <= chunk[skip] <= 0xBF:
            skip += 1
        chunk = chunk[skip:]
    return chunk.decode("utf-8", errors="replace")


# --- JSON result -------------------------------------------------------------------------


def _lines_reversed(text: str) -> Iterator[str]:
    """The lines of `text`, last first. Splits on \\n only, so U+2028 inside JSON is harmless."""
    for line in reversed(text.split("\n")):
        yield line.strip()


def _json_object_line(line: str) -> dict[str, Any] | None:
    """The JSON object `line` holds, or None if it is not exactly one JSON object."""
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _result_from_json(obj: dict[str, Any]) -> ParsedResult:
    return ParsedResult(
        decision=_decision(obj),
        candidate_id=_text(obj, "candidate_id", "final_candidate_id"),
        artifact_path=_text(obj, "artifact_path", "final_artifact_path"),
        attempts=_attempts(obj.get("attempts")),
        scores=_optional_scores(obj.get("scores")),
        weighted_score=_number(obj.get("weighted_score"), "weighted_score", unit=True),
        cost_usd=_cost(obj.get("cost_usd")),
    )


def _optional_scores(value: Any) -> dict[str, float] | None:
    """The result's `scores`, or None when absent or empty (so other score sources apply)."""
    if value is None:
        return None
    return _scores(value, "scores") or None


def _decision(obj: dict[str, Any]) -> str:
    key = "decision" if obj.get("decision") is not None else "final_decision"
    return _decision_value(obj.get(key), key)


def _decision_value(raw: Any, field: str) -> str:
    """The decision word: any non-empty single-line word is a decision (a completed run)."""
    if not isinstance(raw, str):
        raise ResultError(f"{field}: not a string: {_short(raw)}")
    decision = raw.strip().lower()
    if not decision or len(decision) > 200 or any(c.isspace() for c in decision):
        raise ResultError(f"{field}: not a decision word: {_short(raw)}")
    return decision


def _text(obj: dict[str, Any], *keys: str) -> str | None:
    """The first of `keys` that is present and not null, as a string (integers allowed)."""
    for key in keys:
        value = obj.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ResultError(f"{key}: not a string: {_short(value)}")
        text = str(value).strip()
        return text or None
    return None


def _attempts(value: Any) -> int | None:
    """The run's attempt count, or None when absent or not a count (it is unused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _cost(value: Any) -> float | None:
    cost = _number(value, "cost_usd")
    if cost is not None and cost < 0:
        raise ResultError(f"cost_usd: negative: {cost!r}")
    if cost is not None and cost > MAX_RUN_COST_USD:
        raise ResultError(
            f"cost_usd: {cost!r} is above {MAX_RUN_COST_USD:,.0f}, more than any run can cost"
        )
    return cost


def _number(value: Any, field: str, *, unit: bool = False) -> float | None:
    """`value` as a finite float (None stays None); with `unit`, it must lie within 0..1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ResultError(f"{field}: not a number: {_short(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise ResultError(f"{field}: not a finite number: {_short(value)}") from None
    if not math.isfinite(number):
        raise ResultError(f"{field}: not a finite number: {number!r}")
    if unit and not 0.0 <= number <= 1.0:
        raise ResultError(f"{field}: {number!r} is outside 0..1")
    return number


def _scores(value: Any, field: str) -> dict[str, float]:
    """Validate a dimension -> score mapping; a score may be a number or {"score": number}."""
    if not isinstance(value, dict):
        raise ResultError(f"{field}: not an object: {_short(value)}")
    scores: dict[str, float] = {}
    for name, raw in value.items():
        dim_field = f"{field}.{name}"
        if not isinstance(name, str) or not name.strip():
            raise ResultError(f"{field}: empty dimension name")
        if isinstance(raw, dict):
            if "score" not in raw:
                raise ResultError(f"{dim_field}: object without a 'score': {_short(raw)}")
            raw = raw["score"]
        if raw is None:
            raise ResultError(f"{dim_field}: not a number: None")
        number = _number(raw, dim_field, unit=True)
        assert number is not None
        scores[name] = number
    return scores


# --- text summary ------------------------------------------------------------------------


def _result_from_summary(text: str) -> ParsedResult | None:
    """The last `Pipeline Summary:` block that carries a `Final Decision:`, parsed."""
    lines = text.split("\n")
    for start in range(len(lines) - 1, -1, -1):
        if lines[start].strip().lower() != _SUMMARY_HEADER:
            continue
        fields = _summary_fields(lines, start + 1)
        if "final decision" in fields:
            return _result_from_fields(fields)
    return None


def _summary_fields(lines: list[str], first: int) -> dict[str, str]:
    """The indented `Key: value` lines right after a header (keys lower-cased)."""
    fields: dict[str, str] = {}
    for line in lines[first:]:
        match = _SUMMARY_LINE.match(line.rstrip("\r"))
        if match is None:
            break
        key = " ".join(match["key"].lower().split())
        fields.setdefault(key, match["value"])
    return fields


def _result_from_fields(fields: dict[str, str]) -> ParsedResult:
    attempts: int | None = None
    raw_attempts = fields.get("attempts")
    if raw_attempts is not None:
        match = _ATTEMPTS.match(raw_attempts.strip())
        attempts = int(match["n"]) if match is not None else None
    return ParsedResult(
        decision=_decision_value(fields["final decision"], "decision"),
        candidate_id=_summary_text(fields.get("candidate")),
        artifact_path=_summary_text(fields.get("artifact")),
        attempts=attempts,
        scores=None,
        weighted_score=None,
        cost_usd=None,
    )


def _summary_text(value: str | None) -> str | None:
    if value is None or value.strip().lower() in _NONE_WORDS:
        return None
    return value.strip()


# --- scorer output -----------------------------------------------------------------------


def _scorer_candidates(text: str) -> Iterator[dict[str, Any]]:
    """JSON objects in scorer output, most likely first.

    The whole text; then, scanning lines from the end, each line starting with `{` read
    either as one JSON line or as the start of a (pretty-printed) object that runs to the end.
    """
    decoder = json.JSONDecoder()
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            whole = json.loads(stripped)
        except (ValueError, RecursionError):
            whole = None
        if isinstance(whole, dict):
            yield whole
    lines = text.split("\n")
    offsets: list[int] = []
    pos = 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        obj = _json_object_line(line.strip())
        if obj is not None:
            yield obj
            continue
        brace = line.find("{")
        if brace < 0 or line[:brace].strip():
            continue
        start = offsets[index] + brace
        try:
            obj_any, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj_any, dict) and not text[end:].strip():
            yield obj_any


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
