"""Shared pytest fixtures: pin anyio's backend to asyncio (PITFALLS: else every test runs twice)
and kill whatever a test left running."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import support


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run every `@pytest.mark.anyio` test on asyncio only."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: SIGKILL every autoloopd it started with `support.start_autoloopd` that
    still runs and, for a test using tmp_path, every process of a run under tmp_path (found by
    its run marker) -- what a failed test could not stop (its own processes only)."""
    uses_tmp_path = "tmp_path" in request.fixturenames
    tmp_path = request.getfixturevalue("tmp_path") if uses_tmp_path else None
    yield
    support.kill_leftovers(None if tmp_path is None else str(tmp_path))
