"""Shared pytest fixtures: pin anyio's backend to asyncio (PITFALLS: else every test runs twice)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run every `@pytest.mark.anyio` test on asyncio only."""
    return "asyncio"
