"""Putting hostile files in front of the real binary: the one-target run, a snapshot of a
state root (special files included) to prove nothing was touched, and the one stderr line."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers.process import run_autoloopd

_KINDS = (
    (stat.S_ISDIR, "dir"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "chardev"),
    (stat.S_ISLNK, "symlink"),
)


# A minimal valid state file object, for tests that break one field of it.
GOOD_STATE: dict[str, Any] = {
    "schema_version": "1.0",
    "target": "/x",
    "started_at": "2025-01-01T00:00:00+00:00",
    "iterations_completed": 0,
    "total_cost_usd": 0.0,
    "score_history": [],
    "status": "idle",
}


def run_one_target(
    tmp_path: Path, state_root: Path, *extra: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """The seed-compatible one-target command line on `tmp_path/skill`: a fast dry run with
    JSON logs on stderr, unless `extra` gives an --orchestrator-cmd."""
    skill = tmp_path / "skill"
    skill.mkdir(exist_ok=True)
    dry = [] if "--orchestrator-cmd" in extra else ["--dry-run", "--simulated-seconds", "0"]
    args = ["--target", str(skill), "--state-root", str(state_root), *dry, "--log-format", "json"]
    return run_autoloopd([*args, *extra], timeout=timeout)


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under `root`: a regular file's bytes, else its kind ("fifo", "dir", ...)."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        rel = str(path.relative_to(root))
        if stat.S_ISREG(mode):
            found[rel] = path.read_bytes()
        else:
            found[rel] = next((kind for test, kind in _KINDS if test(mode)), "other")
    return found


def one_stderr_line(stderr: str) -> str:
    """The single line of `stderr` that is not a JSON log line (failing on more, none, or a
    traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{stderr}"
    return lines[0]
