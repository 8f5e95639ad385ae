"""The report as one self-contained HTML page: inline CSS and SVG, no scripts, no links out.

Layout: a heading with the totals, the fleet table (`<table id="fleet">`, one
`<tr data-target=...>` per target), then one section per target: why it stopped, its
score-history and cumulative-cost plots, what was kept (candidate and handoff text) and
every iteration's decision, score and cost. Money that is an estimate carries a `~`.
"""

from __future__ import annotations

from html import escape
from itertools import accumulate

from autoloop_daemon.report.model import FleetReport, IterationRow, TargetReport, money, score
from autoloop_daemon.report.svg import line_plot

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .6em;text-align:left;
border-bottom:1px solid #e3e3e3;vertical-align:top}th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.status-error,.problem{color:#b00020}.reason{font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:1em}
svg.plot{background:#fafafa;border:1px solid #ddd}svg .axis{stroke:#999}
svg .series{stroke:#1f6feb;stroke-width:1.5}svg circle{fill:#1f6feb}
svg circle.cost-point{fill:#d97706}svg .cap{stroke:#b00020;stroke-dasharray:4 3}
svg text{font-size:11px;fill:#555}svg .title{font-weight:600;fill:#222}svg .cap-note{fill:#b00020}
pre{background:#f6f8fa;padding:.6em;overflow:auto;white-space:pre-wrap}
.muted{color:#777}
"""


def render_html(report: FleetReport) -> str:
    """The whole report as an HTML document."""
    title = f"autoloopd report, {report.generated_at}"
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">From {escape(report.source)}. Money marked ~ is an estimate '
        "(wall time at the configured rate).</p>",
        _totals(report),
        _fleet_table(report),
        *(_target_section(t) for t in report.targets),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        "<body>" + "\n".join(body) + "</body></html>\n"
    )


def _totals(report: FleetReport) -> str:
    iterations = sum(len(t.iterations) for t in report.targets)
    kept = sum(len(t.kept) for t in report.targets)
    return (
        f'<p id="totals">{len(report.targets)} target(s), {iterations} run(s), {kept} kept, '
        f"{escape(money(report.total_cost_usd, report.estimated))} spent.</p>"
    )


def _fleet_table(report: FleetReport) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in ("Target", "Status", "Iterations", "Best score", "Last decision", "Cost / cap")
    )
    rows = []
    for t in report.targets:
        limit = "" if t.max_iterations is None else f"/{t.max_iterations}"
        rows.append(
            f'<tr data-target="{escape(t.name, quote=True)}">'
            f'<td><a href="#target-{escape(t.name, quote=True)}">{escape(t.name)}</a></td>'
            f'<td class="status-{escape(t.status, quote=True)}">{escape(t.status)}</td>'
            f'<td class="num">{t.iterations_completed}{limit}</td>'
            f'<td class="num">{score(t.best_weighted_score)}</td>'
            f"<td>{escape(t.last_decision or '-')}</td>"
            f'<td class="num">{escape(money(t.total_cost_usd, t.estimated))} / '
            f"{escape(money(t.max_cost_usd))}</td></tr>"
        )
    return f'<table id="fleet"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _target_section(t: TargetReport) -> str:
    anchor = escape(t.name, quote=True)
    parts = [
        f'<section class="target" id="target-{anchor}" data-target="{anchor}">',
        f"<h2>{escape(t.name)}</h2>",
        f'<p>Status <b class="status-{escape(t.status, quote=True)}">{escape(t.status)}</b>'
        + (f': <span class="reason">{escape(t.reason)}</span>' if t.reason else "")
        + "</p>",
        f"<p>{t.iterations_completed} iteration(s) completed, {len(t.iterations)} run(s) "
        f"logged, best score {score(t.best_weighted_score)}, spent "
        f"{escape(money(t.total_cost_usd, t.estimated))} of {escape(money(t.max_cost_usd))}. "
        f'<span class="muted">State: {escape(t.state_root)}</span></p>',
    ]
    parts += [f'<p class="problem">{escape(p)}</p>' for p in t.problems]
    parts.append(_plots(t))
    parts.append(_kept(t))
    if t.reviews:
        items = "".join(
            f'<li class="review review-{escape(r.state, quote=True)}">{escape(r.sentence())}</li>'
            for r in t.reviews
        )
        parts.append(f"<h3>Reviews</h3><ul>{items}</ul>")
    parts.append(_iterations_table(t.name, t.iterations))
    parts.append("</section>")
    return "\n".join(parts)


def _plots(t: TargetReport) -> str:
    cumulative = list(accumulate(row.cost_usd for row in t.iterations))
    cost_points = [(row.iteration, c) for row, c in zip(t.iterations, cumulative, strict=True)]
    return (
        '<div class="plots">'
        + line_plot(
            t.scored,
            target=t.name,
            title="Weighted score by iteration",
            x_format=lambda x: f"#{x:g}",
            y_format=lambda y: f"{y:.3f}",
        )
        + line_plot(
            cost_points,
            target=t.name,
            title="Cumulative cost (USD)",
            point_class="cost-point",
            cap=t.max_cost_usd,
            x_format=lambda x: f"#{x:g}",
            y_format=lambda y: f"${y:.2f}",
        )
        + "</div>"
    )


def _kept(t: TargetReport) -> str:
    if not t.kept:
        return "<h3>Kept</h3><p>nothing was kept</p>"
    items = []
    for row in t.kept:
        where = f", artifact {escape(row.artifact_path)}" if row.artifact_path else ""
        handoff = (
            f"<details><summary>handoff</summary><pre>{escape(row.handoff)}</pre></details>"
            if row.handoff
            else ""
        )
        items.append(
            f'<li class="kept" data-iteration="{row.iteration}">iteration {row.iteration}: '
            f"candidate {escape(row.candidate_id or 'unnamed')}{where}, score "
            f"{escape(row.shown_score)}{handoff}</li>"
        )
    return f"<h3>Kept</h3><ul>{''.join(items)}</ul>"


def _iterations_table(name: str, rows: tuple[IterationRow, ...]) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in ("#", "Finished", "Run", "Decision", "Score", "Cost", "Duration", "Error")
    )
    body = []
    for row in rows:
        body.append(
            f'<tr class="iteration" data-iteration="{row.iteration}">'
            f'<td class="num">{row.iteration}</td><td>{escape(row.finished_at)}</td>'
            f"<td>{escape(row.status)}</td><td>{escape(row.decision or '-')}</td>"
            f'<td class="num">{escape(row.shown_score)}</td>'
            f'<td class="num">{escape(money(row.cost_usd, row.estimated))}</td>'
            f'<td class="num">{row.duration_s:.1f} s</td>'
            f"<td>{escape((row.error or '').splitlines()[0] if row.error else '')}</td></tr>"
        )
    if not body:
        return "<h3>Iterations</h3><p>no runs logged yet</p>"
    return (
        f'<h3>Iterations</h3><table class="iterations" data-target="{escape(name, quote=True)}">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )
