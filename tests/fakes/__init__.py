"""Fake orchestrators and scorers for tests (see README.md): paths and an argv helper."""

from __future__ import annotations

import sys
from pathlib import Path

FAKES_DIR = Path(__file__).resolve().parent
FAKE_ORCHESTRATOR = FAKES_DIR / "fake_orchestrator.py"
FAKE_SCORER = FAKES_DIR / "fake_scorer.py"


def orchestrator_argv(behaviour: str, *args: str) -> list[str]:
    """argv running the fake orchestrator with `behaviour` and extra `args`."""
    return [sys.executable, str(FAKE_ORCHESTRATOR), "--behaviour", behaviour, *args]


def scorer_argv(*args: str) -> list[str]:
    """argv running the fake scorer with extra `args`."""
    return [sys.executable, str(FAKE_SCORER), *args]
