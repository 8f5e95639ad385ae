"""The storage package's fixture: `backend`, each storage backend in turn (backends.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.storage.backends import NAMES, Backend, files_backend, memory_backend, postgres_backend


@pytest.fixture(params=NAMES)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Two owners of a fresh storage of each backend (postgres skips without a server)."""
    if request.param == "memory":
        async with memory_backend(tmp_path) as b:
            yield b
    elif request.param == "files":
        async with files_backend(tmp_path) as b:
            yield b
    else:
        dsn = request.getfixturevalue("pg_dsn")
        async with postgres_backend(tmp_path, dsn) as b:
            yield b
