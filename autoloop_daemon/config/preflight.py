"""What `--check` verifies beyond the file itself, as `nginx -t` does: what the config points at.

The orchestrator's and scorer's programs exist and can be executed (after the placeholders
are filled in), including the script an interpreter is given; `state_dir` can be written.
Each problem is one line naming the key.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from autoloop_daemon.models import TargetSpec
from autoloop_daemon.runs.command_line import render_argv

# Programs whose first non-option argument is a script that must exist.
_INTERPRETERS = ("python", "python3", "bash", "sh", "dash", "zsh", "node", "perl", "ruby")


def _interpreter(program: str) -> bool:
    name = Path(program).name
    return any(name == i or (name.startswith(i) and name[len(i) :].replace(".", "").isdigit())
               for i in _INTERPRETERS)  # fmt: skip


def command_problems(argv: list[str], key: str) -> list[str]:
    """Problems with running `argv`: its program, and an interpreter's script argument."""
    program = argv[0]
    if "/" in program:
        path = Path(program)
        if not path.is_file():
            return [f"{key}[0]: no such program: {program}"]
        if not os.access(path, os.X_OK):
            return [f"{key}[0]: not executable: {program}"]
    elif shutil.which(program) is None:
        return [f"{key}[0]: {program!r} is not on PATH"]
    if _interpreter(program):
        script = next((a for a in argv[1:] if not a.startswith("-")), None)
        runs_a_script = script is not None and argv[1:2] not in (["-c"], ["-m"])
        if runs_a_script and script is not None and not Path(script).is_file():
            return [f"{key}: the script {script} does not exist"]
    return []


def target_problems(spec: TargetSpec, key: str) -> list[str]:
    """Problems with what one target points at (nothing to run for a dry-run target)."""
    if spec.dry_run:
        return []
    problems = command_problems(render_argv(spec.orchestrator, spec, 1), f"{key}.orchestrator")
    if spec.scorer:
        problems += command_problems(render_argv(spec.scorer, spec, 1), f"{key}.scorer")
    return problems


def writable_dir_problem(directory: Path, key: str) -> str | None:
    """None when `directory` can be written (or created), else the problem."""
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{key}: {directory} is not writable (checked {probe})"
    return None
