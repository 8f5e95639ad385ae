"""The report and the dashboard in a real browser: headless Chromium driven by Playwright.

Both load what a real `autoloopd` produced (a finished fleet of dry-run targets plus one
whose breaker tripped), check the fleet table and that each target's score plot drew one
point per scored iteration, and save a screenshot under the test's tmp dir. Without
/usr/bin/chromium the tests skip and say how to install it (tests/helpers/browser.py).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from tests.helpers.browser import browser_page, require_chromium
from tests.helpers.control import free_port
from tests.helpers.daemon import Lab
from tests.helpers.fleet import (
    BROKEN_TARGET,
    DRY_RUN_TARGETS,
    SECRET,
    finished_fleet,
    fleet_targets,
)
from tests.helpers.logs import read_log
from tests.helpers.process import run_autoloopd

ALL_TARGETS = [*DRY_RUN_TARGETS, BROKEN_TARGET]


def scored_points(lab: Lab, name: str) -> int:
    """How many of the target's logged iterations have a weighted score."""
    return sum(1 for e in read_log(lab.state_root(name)) if e["weighted_score"] is not None)


def point_counts(page: Any, selector: str) -> dict[str, int]:
    """`{target: number of <circle> matching selector}` as the page draws them now."""
    counts: dict[str, int] = page.evaluate(
        """(selector) => {
            const out = {};
            for (const c of document.querySelectorAll(selector)) {
                out[c.dataset.target] = (out[c.dataset.target] || 0) + 1;
            }
            return out;
        }""",
        selector,
    )
    return counts


def test_report_in_the_browser_shows_the_fleet_and_every_plot(tmp_path: Path) -> None:
    """The HTML report of a finished fleet renders in Chromium with one table row per target
    and, per target, one score point per scored iteration (none for the broken one)."""
    require_chromium()
    lab = Lab(tmp_path / "lab")
    finished_fleet(lab)
    out = tmp_path / "report.html"
    done = run_autoloopd(["report", "--config", str(lab.config), "--output", str(out)])
    assert done.returncode == 0, done.stderr
    with browser_page(tmp_path) as page:
        page.goto(out.as_uri())
        rows = page.eval_on_selector_all(
            "#fleet tbody tr", "rows => rows.map(r => r.dataset.target)"
        )
        assert rows == ALL_TARGETS
        expected = {name: scored_points(lab, name) for name in ALL_TARGETS}
        assert expected[BROKEN_TARGET] == 0 and all(expected[n] > 0 for n in DRY_RUN_TARGETS)
        counts = point_counts(page, "svg.plot circle.point")
        assert {name: counts.get(name, 0) for name in ALL_TARGETS} == expected
        costs = point_counts(page, "svg.plot circle.cost-point")
        assert {n: costs.get(n, 0) for n in ALL_TARGETS} == {
            n: len(read_log(lab.state_root(n))) for n in ALL_TARGETS
        }
        status = page.inner_text(f'#fleet tr[data-target="{BROKEN_TARGET}"]')
        assert "error" in status
        assert SECRET not in page.content()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        assert page.errors == []
    assert (tmp_path / "report.png").stat().st_size > 0


def test_dashboard_in_the_browser_lists_every_target_and_draws_their_plots(
    tmp_path: Path,
) -> None:
    """The dashboard served by a real daemon (`daemon.http_listen` on loopback), loaded while
    the fleet runs, lists every target in its table and, refreshing itself, ends with one
    score point per scored iteration of each target and one spend point per logged run."""
    require_chromium()
    lab = Lab(tmp_path / "lab")
    port = free_port()
    lab.write(
        fleet_targets(lab, simulated_seconds=0.3),
        defaults={"mode": "single-run"},
        # Stay up once every target has stopped, so the finished fleet can be looked at.
        daemon={"http_listen": f"127.0.0.1:{port}", "exit_when_idle": False},
    )
    daemon = lab.start()
    try:
        daemon.wait_event("daemon_ready")
        with browser_page(tmp_path) as page:
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function(
                """(names) => names.every(
                    n => document.querySelector(`#fleet tbody tr[data-target="${n}"]`))""",
                arg=ALL_TARGETS,
                timeout=30_000,
            )
            daemon.wait_event("target_stopped", count=len(ALL_TARGETS), timeout=60)
            expected = {name: scored_points(lab, name) for name in ALL_TARGETS}
            assert expected[BROKEN_TARGET] == 0 and all(expected[n] for n in DRY_RUN_TARGETS)
            page.wait_for_function(
                """(expected) => Object.entries(expected).every(([name, n]) =>
                    document.querySelectorAll(
                        `svg.plot circle.point[data-target="${name}"]`).length === n)""",
                arg=expected,
                timeout=30_000,
            )
            assert point_counts(page, "circle.point") == {n: c for n, c in expected.items() if c}
            runs = sum(len(read_log(lab.state_root(n))) for n in ALL_TARGETS)
            page.wait_for_function(
                "(n) => document.querySelectorAll('circle.spend-point').length === n",
                arg=runs,
                timeout=30_000,
            )
            status = page.inner_text(f'#fleet tr[data-target="{BROKEN_TARGET}"] td.status')
            assert status == "error"
            assert SECRET not in page.content()
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert page.errors == []
        assert (tmp_path / "dashboard.png").stat().st_size > 0
    finally:
        code = daemon.stop(signal.SIGTERM)
    assert code in (0, 1), daemon.text()[-2000:]  # 1: gamma ended in error


def test_dashboard_review_panel_approves_with_the_apis_auth_and_refuses_without(
    tmp_path: Path,
) -> None:
    """A candidate the orchestrator held back shows in the dashboard's review panel (the
    dashboard behind `daemon.http_token_file`, loaded with the bearer token); its Approve
    button records the verdict with the note, as `bearer token`, and writes the feedback
    record. The same POST without the token is 401 and one with a form type 415: neither
    decides anything."""
    import json
    import urllib.error
    import urllib.request

    from autoloop_daemon.storage.files.review_files import read_verdicts

    require_chromium()
    lab = Lab(tmp_path / "lab")
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-review-token\n")
    table = lab.target("skill", "hold", mode="continuous", cooldown_minutes=600)
    daemon_keys = {"http_listen": f"127.0.0.1:{port}", "http_token_file": str(token_file)}
    lab.write([table], daemon=daemon_keys)
    daemon = lab.start()
    base = f"http://127.0.0.1:{port}"
    try:
        daemon.wait_event("iteration_finished", target="skill")
        body = json.dumps({"verdict": "approve"}).encode()
        for headers, code in (
            ({"Content-Type": "application/json"}, 401),
            ({"Authorization": "Bearer s3cret-review-token",
              "Content-Type": "application/x-www-form-urlencoded"}, 415),
        ):  # fmt: skip
            req = urllib.request.Request(f"{base}/api/targets/skill/review", body, headers)
            try:
                urllib.request.urlopen(req, timeout=30)
            except urllib.error.HTTPError as exc:
                assert exc.code == code
            else:
                raise AssertionError(f"a review POST with {headers} was accepted")
        assert read_verdicts(lab.state_root("skill")) == []
        with browser_page(tmp_path) as page:
            page.set_extra_http_headers({"Authorization": "Bearer s3cret-review-token"})
            page.goto(f"{base}/")
            row = page.wait_for_selector("#reviews tbody tr[data-review-id]", timeout=30_000)
            review_id = row.get_attribute("data-review-id")
            assert "Tighten the prompt" in row.inner_text()
            row.query_selector("input.note").fill("looks right")
            row.query_selector("button.approve").click()
            page.wait_for_function(
                "() => document.getElementById('review-message').textContent.startsWith("
                "'approved')",
                timeout=30_000,
            )
            page.wait_for_function(
                "() => document.querySelectorAll('#reviews tbody tr').length === 0",
                timeout=30_000,
            )
            page.screenshot(path=str(tmp_path / "reviews.png"), full_page=True)
            assert page.errors == []
        (verdict,) = read_verdicts(lab.state_root("skill"))
        assert (verdict["id"], verdict["verdict"]) == (review_id, "approve")
        assert (verdict["by"], verdict["note"]) == ("bearer token", "looks right")
        (record,) = (lab.skills / "skill" / ".feedback").iterdir()
        assert record.read_text().endswith("was approved by a reviewer: looks right\n")
    finally:
        daemon.stop(signal.SIGTERM)
