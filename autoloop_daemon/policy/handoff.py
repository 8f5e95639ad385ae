"""A handoff's text: what an iteration decided, rejected, scored and left to do, as the
Markdown `handoffs/iteration-N.md` holds. Pure: plain data in, text out."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping

from autoloop_daemon.models import LogEntry
from autoloop_daemon.policy.decisions import is_rejection

REMAINING_THRESHOLD = 0.80
# Longest value (candidate id, artifact path, error, dimension) shown in a handoff line.
HANDOFF_VALUE_CHARS = 300


def _fmt_score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _fmt_delta(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "n/a"
    delta = round(after - before, 2)
    if delta == 0:
        delta = 0.0  # no "-0.00"
    return f"{delta:+.2f}"


def _one_line(text: str, limit: int = HANDOFF_VALUE_CHARS) -> str:
    """`text` made inert for one Markdown line: no line breaks, no control characters.

    Every kind of line break and whitespace (\\r, \\v, U+2028, ...) becomes one space and
    other control or format characters are dropped, so a value an orchestrator chose can
    never start a line of its own (a heading, a list item, a fence) in the handoff.
    """
    visible = "".join(
        ch for ch in text if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf")
    )
    flat = " ".join(visible.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _value(text: str | None, default: str) -> str:
    return (_one_line(text) if text is not None else "") or default


def handoff_for(entry: LogEntry, before: Mapping[str, float]) -> str:
    """The handoff of a completed log entry, given the scores before it. Pure."""
    return render_handoff(
        iteration=entry.iteration,
        decision=entry.decision,
        candidate_id=entry.candidate_id,
        artifact_path=entry.artifact_path,
        before=before,
        after=dict(entry.scores),
    )


def render_handoff(
    *,
    iteration: int,
    decision: str | None,
    candidate_id: str | None,
    artifact_path: str | None,
    before: Mapping[str, float],
    after: Mapping[str, float],
    error: str | None = None,
    threshold: float = REMAINING_THRESHOLD,
) -> str:
    """The Markdown handoff of one iteration, for the next one to read. Pure.

    Every value an orchestrator chose (candidate, artifact, error, dimension names) is put
    on its line flattened (`_one_line`): it cannot add lines or sections to the handoff.

    Sections: `## Decided` (decision, candidate, artifact, and the error if any),
    `## Rejected` (the candidate when the decision is reject/revert, else "none"),
    `## Scores` (every dimension of `before` or `after`, sorted:
    "- accuracy: 0.62 → 0.71 (+0.09)", "n/a" where missing) and `## Remaining` (dimensions
    whose score after, or before when there is no score after, is below `threshold`).
    """
    lines = [f"# Iteration {iteration} handoff", "", "## Decided"]
    lines.append(f"- Decision: {_value(decision, 'none')}")
    lines.append(f"- Candidate: {_value(candidate_id, 'none')}")
    lines.append(f"- Artifact: {_value(artifact_path, 'none')}")
    if error and _one_line(error):
        lines.append(f"- Error: {_one_line(error)}")

    lines += ["", "## Rejected"]
    if is_rejection(decision):
        lines.append(f"- {_value(candidate_id, 'unnamed candidate')} ({decision})")
    else:
        lines.append("none")

    dimensions = sorted(set(before) | set(after))
    lines += ["", "## Scores"]
    if not dimensions:
        lines.append("none")
    for dim in dimensions:
        old, new = before.get(dim), after.get(dim)
        shown = _value(dim, "(unnamed)")
        lines.append(f"- {shown}: {_fmt_score(old)} → {_fmt_score(new)} ({_fmt_delta(old, new)})")

    lines += ["", "## Remaining"]
    remaining = []
    for dim in dimensions:
        current = after.get(dim, before.get(dim))
        if current is not None and current < threshold:
            remaining.append(f"- {_value(dim, '(unnamed)')}: {current:.2f} (below {threshold:.2f})")
    lines += remaining or ["none"]
    return "\n".join(lines) + "\n"
