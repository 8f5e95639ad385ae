"""`autoloopd report`: the morning view of a fleet, from its files alone.

The pure renderers get plain records; the command runs as a real subprocess on the files a
real `autoloopd --config` run left behind (dry-run targets and one whose breaker tripped).
The browser check of the same report lives in test_browser.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from autoloop_daemon.report.html import render_html
from autoloop_daemon.report.markdown import render_markdown
from autoloop_daemon.report.model import FleetReport, IterationRow, TargetReport
from autoloop_daemon.report.reader import read_target
from autoloop_daemon.report.svg import line_plot
from tests.helpers.daemon import Lab
from tests.helpers.fleet import BROKEN_TARGET, DRY_RUN_TARGETS, SECRET, finished_fleet
from tests.helpers.logs import read_log
from tests.helpers.process import run_autoloopd


def row(iteration: int, **fields: object) -> IterationRow:
    """An iteration row with plain defaults."""
    values: dict[str, object] = dict(
        iteration=iteration, started_at="2026-01-01T00:00:00Z",
        finished_at="2026-01-01T00:01:00Z", status="completed", decision="reject",
        weighted_score=0.5, cost_usd=0.25, estimated=False, duration_s=60.0,
        candidate_id=None, artifact_path=None, error=None, handoff=None,
    )  # fmt: skip
    values.update(fields)
    return IterationRow(**values)  # type: ignore[arg-type]


def target(name: str, rows: tuple[IterationRow, ...], **fields: object) -> TargetReport:
    """A target report with plain defaults."""
    values: dict[str, object] = dict(
        name=name, state_root=f"/state/{name}", status="stopped_max_iter",
        reason="max_iterations reached (2/2)", iterations_completed=len(rows),
        max_iterations=len(rows), total_cost_usd=sum(r.cost_usd for r in rows),
        max_cost_usd=10.0, best_weighted_score=0.7, last_decision="reject", iterations=rows,
    )  # fmt: skip
    values.update(fields)
    return TargetReport(**values)  # type: ignore[arg-type]


def test_plot_draws_one_marked_circle_per_point_and_the_cap() -> None:
    """Each point is a circle with its class and target; the cap is a dashed line."""
    svg = line_plot([(1, 0.5), (2, 0.7), (3, 0.6)], target="a&b", title="t", cap=1.0)
    assert svg.count('<circle class="point" data-target="a&amp;b"') == 3
    assert 'class="cap"' in svg
    assert "no data yet" in line_plot([], target="x", title="t")


def test_html_marks_estimates_shows_what_was_kept_and_escapes_everything() -> None:
    """Estimated money gets `~`, a kept iteration shows its candidate and handoff, and text
    from the files cannot inject markup."""
    rows = (
        row(
            1,
            decision="keep",
            candidate_id="cand-<1>",
            handoff="# handoff <script>",
            estimated=True,
        ),
        row(2, weighted_score=None, error="boom\nsecond line"),
    )
    report = FleetReport("2026-01-01T00:00:00Z", "cfg", (target("<b>x</b>", rows),))
    page = render_html(report)
    assert "<script>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "~$0.2500" in page and "~$0.5000" in page  # the row and the target's total
    assert "cand-&lt;1&gt;" in page and "# handoff &lt;script&gt;" in page
    assert page.count('<circle class="point"') == 1  # the unscored run has no point
    assert page.count('<circle class="cost-point"') == 2
    assert "second line" not in page  # an error shows its first line only


def test_markdown_has_the_same_content_without_plots() -> None:
    """The Markdown report lists the fleet, the stop reason, kept candidates and every run."""
    rows = (row(1, decision="keep", candidate_id="c1", handoff="## Decided\n- keep"), row(2))
    md = render_markdown(FleetReport("now", "cfg", (target("a|b", rows),)))
    assert "| a\\|b | stopped_max_iter | 2/2 |" in md
    assert "max_iterations reached (2/2)" in md
    assert "candidate c1" in md and "  > \\#\\# Decided" in md
    assert re.search(r"^\| 2 \| .* \| completed \| reject \| 0\.5000 \| \$0\.2500 \|", md, re.M)
    assert "<svg" not in md


def test_reader_skips_bad_lines_without_touching_the_files(tmp_path: Path) -> None:
    """A torn last line and a corrupt line are reported as problems; nothing is rewritten."""
    good = {
        "iteration": 1, "started_at": "s", "finished_at": "f", "status": "completed",
        "decision": "keep", "weighted_score": 0.6, "cost_usd": 0.5, "duration_seconds": 1.0,
        "cost_source": "estimated",
    }  # fmt: skip
    data = (json.dumps(good) + "\nnot json\n" + '{"iteration": 3').encode()
    (tmp_path / "iteration_log.jsonl").write_bytes(data)
    report = read_target("t", tmp_path)
    assert [r.iteration for r in report.iterations] == [1]
    assert report.iterations[0].estimated and report.estimated
    assert len(report.problems) == 2 and report.status == "no state yet"
    assert (tmp_path / "iteration_log.jsonl").read_bytes() == data


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """A real fleet run to its end (shared by this module's command-line tests)."""
    lab = Lab(tmp_path_factory.mktemp("fleet"))
    finished_fleet(lab)
    return lab


def test_report_command_writes_html_with_every_target_plot_and_reason(
    fleet: Lab, tmp_path: Path
) -> None:
    """`autoloopd report --config F --output X.html`: one row and one section per target,
    one score point per scored iteration, the breaker's reason, and nothing changed."""
    before = {p: p.read_bytes() for p in fleet.state_dir.rglob("*") if p.is_file()}
    out = tmp_path / "report.html"
    done = run_autoloopd(["report", "--config", str(fleet.config), "--output", str(out)])
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    for name in [*DRY_RUN_TARGETS, BROKEN_TARGET]:
        assert f'<tr data-target="{name}">' in page
        scored = [e for e in read_log(fleet.state_root(name)) if e["weighted_score"] is not None]
        assert page.count(f'<circle class="point" data-target="{name}"') == len(scored)
    assert "circuit breaker tripped; last: " in page
    assert "max_iterations reached (3/3)" in page
    assert re.findall(r"https?://(?!www\.w3\.org/2000/svg\b)", page) == []  # self-contained
    assert SECRET not in page
    after = {p: p.read_bytes() for p in fleet.state_dir.rglob("*") if p.is_file()}
    assert after == before


def test_report_command_writes_markdown_from_state_roots(fleet: Lab, tmp_path: Path) -> None:
    """`--state-root` (repeatable) and `--format md` give the Markdown report of those roots."""
    out = tmp_path / "report.txt"
    roots = [str(fleet.state_root(name)) for name in DRY_RUN_TARGETS]
    args = ["report", "--output", str(out), "--format", "md"]
    done = run_autoloopd([*args, *(a for r in roots for a in ("--state-root", r))])
    assert done.returncode == 0, done.stderr
    md = out.read_text()
    assert [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| alpha")]
    assert "## alpha" in md and "## beta" in md and BROKEN_TARGET not in md
    assert "### Kept" in md and "<svg" not in md
    assert SECRET not in md


def test_report_command_refuses_a_bad_config_in_one_line(tmp_path: Path) -> None:
    """A config error is one line naming the file, exit code 78, and no output file."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[[targets]]\nname = 3\n")
    out = tmp_path / "r.html"
    done = run_autoloopd(["report", "--config", str(bad), "--output", str(out)])
    assert done.returncode == 78
    assert done.stderr.count("\n") == 1 and str(bad) in done.stderr
    assert not out.exists()


def test_reader_counts_the_limits_with_their_extensions(tmp_path: Path) -> None:
    """A target extended by `ctl extend` (3 + 13 iterations, $2 + $5) reads as 16/16 and $7,
    not 16/3 with the old cap (issue 22)."""
    state = {
        "schema_version": "1.0", "target": "t", "iterations_completed": 16,
        "max_iterations": 3, "extra_iterations": 13, "max_cost_usd": 2.0,
        "extra_cost_usd": 5.0, "total_cost_usd": 1.0, "status": "stopped_max_iter",
    }  # fmt: skip
    (tmp_path / "autoloop_state.json").write_text(json.dumps(state))
    report = read_target("t", tmp_path)
    assert (report.max_iterations, report.max_cost_usd) == (16, 7.0)
    assert report.reason == "max_iterations reached (16/16)"
