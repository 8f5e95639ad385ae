"""On a terminal the daemon draws a live view and answers the first Ctrl+C at once; off a
terminal nothing changes. Run on a real pseudo-terminal (pty) with real signals."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.helpers.daemon import Lab
from tests.helpers.pty_run import PtyRun


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    """A fresh lab under tmp_path."""
    return Lab(tmp_path)


def test_live_view_and_the_first_ctrl_c_notice_on_a_terminal(lab: Lab) -> None:
    """On a pty the daemon draws the live view (running iteration with its elapsed time,
    a cooldown countdown), and the first SIGINT prints at once how long it waits for how many
    running iterations; the second stops them."""
    slow = lab.target("slow", "hang", mode="continuous")
    quick = lab.target("quick", "keep", mode="continuous", cooldown_minutes=600)
    lab.write([slow, quick], daemon={"log_format": "auto"})  # the lab's default is json
    with PtyRun(["--config", str(lab.config)], lab.root) as run:
        run.wait_text("PHASE")
        run.wait_text("running for")
        run.wait_text("next run in")
        run.proc.send_signal(signal.SIGINT)
        run.wait_text(
            "Stopping gracefully: waiting up to 30 s for 1 running iteration "
            "(Ctrl+C again to stop them now)"
        )
        run.proc.send_signal(signal.SIGINT)
        run.wait_text("Stopping now: 1 running iteration cancelled")
    code = run.close()
    assert code == 0, run.text()[-3000:]


def test_off_a_terminal_the_output_stays_json_lines(lab: Lab) -> None:
    """Without a terminal there is no live view and no notice: every line is JSON."""
    lab.write([lab.target("quick", "keep", mode="single-run", max_iterations=1)])
    daemon = lab.start()
    assert daemon.wait() == 0
    lines = [line for line in daemon.text().splitlines() if line]
    assert lines and all(line.startswith("{") for line in lines), lines[:5]
