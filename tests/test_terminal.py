"""On a terminal the daemon draws a live view and answers the first Ctrl+C at once; off a
terminal nothing changes. Run on a real pseudo-terminal (pty) with real signals."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import termios
import threading
from pathlib import Path

import pytest

from tests.helpers.daemon import Lab
from tests.helpers.process import AUTOLOOPD, child_env
from tests.helpers.wait import wait_for

ANSI_FREE_COLUMNS = 200
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class PtyRun:
    """`autoloopd ARGS` with stdin, stdout and stderr on a new pty; collects what it draws."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        """Start it on a 50 x 200 terminal."""
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, ANSI_FREE_COLUMNS, 0, 0))
        env = child_env({"COLUMNS": str(ANSI_FREE_COLUMNS), "LINES": "50", "TERM": "xterm"})
        self.proc = subprocess.Popen(
            [*AUTOLOOPD, *args], stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
            close_fds=True,
        )  # fmt: skip
        os.close(slave)
        self._master = master
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO once the child closed its side
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    def text(self) -> str:
        """Everything drawn so far, without the terminal's escape sequences."""
        return ANSI.sub("", b"".join(self._chunks).decode("utf-8", "replace"))

    def wait_text(self, needle: str, timeout: float = 30.0) -> None:
        """Wait until `needle` was drawn."""
        wait_for(lambda: needle in self.text(), timeout=timeout, what=repr(needle))

    def close(self, timeout: float = 60.0) -> int:
        """Wait for the exit code (SIGKILL after `timeout`) and close the pty."""
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._reader.join(timeout=10)
            os.close(self._master)


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
    run = PtyRun(["--config", str(lab.config)], lab.root)
    try:
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
    except BaseException:
        run.proc.kill()
        run.close()
        raise
    code = run.close()
    assert code == 0, run.text()[-3000:]


def test_off_a_terminal_the_output_stays_json_lines(lab: Lab) -> None:
    """Without a terminal there is no live view and no notice: every line is JSON."""
    lab.write([lab.target("quick", "keep", mode="single-run", max_iterations=1)])
    daemon = lab.start()
    assert daemon.wait() == 0
    lines = [line for line in daemon.text().splitlines() if line]
    assert lines and all(line.startswith("{") for line in lines), lines[:5]
