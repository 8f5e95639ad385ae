"""argv of the fake orchestrators and scorers in tests/fakes/ (run with this interpreter)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
FAKES = TESTS / "fakes"
FAKE_ORCHESTRATOR = FAKES / "fake_orchestrator.py"
FAKE_SCORER = FAKES / "fake_scorer.py"


def fake(name: str) -> str:
    """Absolute path of a fake script in tests/fakes/."""
    path = FAKES / name
    assert path.is_file(), f"no fake orchestrator {path}"
    return str(path)


def fake_cmd(name: str, *args: str) -> str:
    """A --orchestrator-cmd (or --scorer-cmd) value running a fake with this interpreter."""
    return shlex.join([sys.executable, fake(name), *args])


def fake_argv(behaviour: str, *args: str) -> list[str]:
    """argv of the fake orchestrator with `behaviour` and `args` only (no placeholders)."""
    return [sys.executable, str(FAKE_ORCHESTRATOR), "--behaviour", behaviour, *args]


def orchestrator_argv(behaviour: str, *args: str) -> list[str]:
    """argv of the fake orchestrator with `behaviour`, passing autoloopd's placeholders
    ({target}, {state_root}, {iteration}) through as the real orchestrator's flags."""
    return fake_argv(
        behaviour,
        "--target",
        "{target}",
        "--state-root",
        "{state_root}",
        "--iteration",
        "{iteration}",
        *args,
    )


def orchestrator_cmd(behaviour: str, *args: str) -> str:
    """`orchestrator_argv` as one --orchestrator-cmd value."""
    return shlex.join(orchestrator_argv(behaviour, *args))


def scorer_argv(*args: str) -> list[str]:
    """argv of the fake scorer with `args`."""
    return [sys.executable, str(FAKE_SCORER), *args]
