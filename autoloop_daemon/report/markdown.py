"""The report as Markdown: the same content as the HTML page, without the plots."""

from __future__ import annotations

import re

from autoloop_daemon.report.model import FleetReport, TargetReport, money, score

# Backslash-escaped: every character that starts inline Markdown (emphasis, code, links,
# images, strikethrough, table cells, headings, escapes). `<`, `>` and `&` become entities
# instead, so no raw HTML or entity reaches the rendered page.
_ESCAPED = {c: "\\" + c for c in "\\`*[]|~!#"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"}
_ESCAPES = str.maketrans(_ESCAPED)
# `_` inside a word (`max_iterations`) never starts emphasis: only the others are escaped.
_EDGE_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")


def _line(text: str) -> str:
    """`text` on one line without control, format (bidi) or separator characters."""
    return "".join(c for c in " ".join(text.split()) if c.isprintable())


def _cell(text: str) -> str:
    """Text shown literally, on one line: safe in a table cell, a heading or a list item."""
    return _EDGE_UNDERSCORE.sub(r"\\_", _line(text).translate(_ESCAPES))


def _code(text: str) -> str:
    """`text` (a path) as one code span, fenced by more backticks than any run inside it."""
    text = _line(text)
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def render_markdown(report: FleetReport) -> str:
    """The whole report as a Markdown document."""
    iterations = sum(len(t.iterations) for t in report.targets)
    kept = sum(len(t.kept) for t in report.targets)
    lines = [
        f"# autoloopd report, {_cell(report.generated_at)}",
        "",
        f"From {_cell(report.source)}. "
        "Money marked ~ is an estimate (wall time at the configured rate).",
        "",
        f"{len(report.targets)} target(s), {iterations} run(s), {kept} kept, "
        f"{money(report.total_cost_usd, report.estimated)} spent.",
        "",
        "| Target | Status | Iterations | Best score | Last decision | Cost / cap |",
        "|---|---|---:|---:|---|---:|",
    ]
    for t in report.targets:
        limit = "" if t.max_iterations is None else f"/{t.max_iterations}"
        lines.append(
            f"| {_cell(t.name)} | {t.status} | {t.iterations_completed}{limit} | "
            f"{score(t.best_weighted_score)} | {_cell(t.last_decision or '-')} | "
            f"{money(t.total_cost_usd, t.estimated)} / {money(t.max_cost_usd)} |"
        )
    for t in report.targets:
        lines += ["", *_target(t)]
    return "\n".join(lines) + "\n"


def _target(t: TargetReport) -> list[str]:
    lines = [f"## {_cell(t.name)}", ""]
    lines.append(f"Status **{t.status}**" + (f": {_cell(t.reason)}" if t.reason else ""))
    lines += [
        "",
        f"{t.iterations_completed} iteration(s) completed, {len(t.iterations)} run(s) logged, "
        f"best score {score(t.best_weighted_score)}, spent "
        f"{money(t.total_cost_usd, t.estimated)} of {money(t.max_cost_usd)}. "
        f"State: {_code(t.state_root)}",
    ]
    lines += [f"\n> problem: {_cell(p)}" for p in t.problems]
    lines += ["", "### Kept", ""]
    if not t.kept:
        lines.append("nothing was kept")
    for row in t.kept:
        where = f", artifact {_code(row.artifact_path)}" if row.artifact_path else ""
        lines.append(
            f"- iteration {row.iteration}: "
            f"candidate {_cell(row.candidate_id or 'unnamed')}{where}, "
            f"score {row.shown_score}"
        )
        if row.handoff:
            quoted = [f"  > {_cell(line)}".rstrip() for line in row.handoff.rstrip().splitlines()]
            lines += ["", *quoted, ""]
    if t.reviews:
        lines += ["", "### Reviews", ""]
        lines += [f"- {_cell(review.sentence())}" for review in t.reviews]
    lines += ["", "### Iterations", ""]
    if not t.iterations:
        lines.append("no runs logged yet")
        return lines
    lines += [
        "| # | Finished | Run | Decision | Score | Cost | Duration | Error |",
        "|---:|---|---|---|---:|---:|---:|---|",
    ]
    for row in t.iterations:
        error = row.error.splitlines()[0] if row.error else ""
        lines.append(
            f"| {row.iteration} | {_cell(row.finished_at)} | {row.status} | "
            f"{_cell(row.decision or '-')} | {row.shown_score} | "
            f"{money(row.cost_usd, row.estimated)} | {row.duration_s:.1f} s | {_cell(error)} |"
        )
    return lines
