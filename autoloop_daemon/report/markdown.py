"""The report as Markdown: the same content as the HTML page, without the plots."""

from __future__ import annotations

from autoloop_daemon.report.model import FleetReport, TargetReport, money, score


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (one line, no bare pipes)."""
    return " ".join(text.split()).replace("|", "\\|")


def render_markdown(report: FleetReport) -> str:
    """The whole report as a Markdown document."""
    iterations = sum(len(t.iterations) for t in report.targets)
    kept = sum(len(t.kept) for t in report.targets)
    lines = [
        f"# autoloopd report, {report.generated_at}",
        "",
        f"From {report.source}. Money marked ~ is an estimate (wall time at the configured rate).",
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
            f"| {_cell(t.name)} | {_cell(t.status)} | {t.iterations_completed}{limit} | "
            f"{score(t.best_weighted_score)} | {_cell(t.last_decision or '-')} | "
            f"{money(t.total_cost_usd, t.estimated)} / {money(t.max_cost_usd)} |"
        )
    for t in report.targets:
        lines += ["", *_target(t)]
    return "\n".join(lines) + "\n"


def _target(t: TargetReport) -> list[str]:
    lines = [f"## {t.name}", ""]
    lines.append(f"Status **{t.status}**" + (f": {t.reason}" if t.reason else ""))
    lines += [
        "",
        f"{t.iterations_completed} iteration(s) completed, {len(t.iterations)} run(s) logged, "
        f"best score {score(t.best_weighted_score)}, spent "
        f"{money(t.total_cost_usd, t.estimated)} of {money(t.max_cost_usd)}. "
        f"State: `{t.state_root}`",
    ]
    lines += [f"\n> problem: {_cell(p)}" for p in t.problems]
    lines += ["", "### Kept", ""]
    if not t.kept:
        lines.append("nothing was kept")
    for row in t.kept:
        where = f", artifact `{row.artifact_path}`" if row.artifact_path else ""
        lines.append(
            f"- iteration {row.iteration}: candidate {row.candidate_id or 'unnamed'}{where}, "
            f"score {row.shown_score}"
        )
        if row.handoff:
            quoted = [f"  > {line}".rstrip() for line in row.handoff.rstrip().splitlines()]
            lines += ["", *quoted, ""]
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
            f"| {row.iteration} | {row.finished_at} | {row.status} | "
            f"{_cell(row.decision or '-')} | {row.shown_score} | "
            f"{money(row.cost_usd, row.estimated)} | {row.duration_s:.1f} s | {_cell(error)} |"
        )
    return lines
