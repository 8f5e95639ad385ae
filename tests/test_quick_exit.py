"""`exit_quickly` (cli/quick_exit.py), in real child interpreters: the exit code, the
`atexit` handlers and the unflushed output survive it; a live non-daemon thread keeps the
normal exit (which waits for it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = """
import atexit, sys, threading, time
from autoloop_daemon.cli.quick_exit import exit_quickly
atexit.register(lambda: open(sys.argv[1], "w").write("atexit ran"))
sys.stdout.write("unflushed, no newline")
sys.stderr.write("and on stderr")
if sys.argv[2] == "thread":
    worker = threading.Thread(target=lambda: (time.sleep(0.3), print(" thread done")))
    worker.start()
code = exit_quickly(7)
print(" returned", code)
sys.exit(code)
"""


def _child(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(tmp_path / "atexit"), mode],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1],
    )  # fmt: skip


def test_exit_quickly_keeps_the_exit_code_the_atexit_handlers_and_the_output(
    tmp_path: Path,
) -> None:
    """It does not return: the code is 7, the handler ran, both streams were flushed."""
    done = _child(tmp_path, "plain")
    assert done.returncode == 7, done.stderr
    assert done.stdout == "unflushed, no newline"
    assert done.stderr == "and on stderr"
    assert (tmp_path / "atexit").read_text() == "atexit ran"


def test_a_live_non_daemon_thread_keeps_the_normal_exit(tmp_path: Path) -> None:
    """With a non-daemon thread alive it returns the code; the normal exit then waits for
    the thread, as it would have without `exit_quickly`."""
    done = _child(tmp_path, "thread")
    assert done.returncode == 7, done.stderr
    assert done.stdout.startswith("unflushed, no newline returned 7")
    assert done.stdout.endswith(" thread done\n")
    assert (tmp_path / "atexit").read_text() == "atexit ran"
