"""Shared pytest fixtures: pin anyio's backend to asyncio (PITFALLS: else every test runs
twice), fail blocking calls on the event loop where asked, and kill whatever a test left
running."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import structlog
from blockbuster import BlockBuster

from autoloop_daemon.observers.logs import configure_logging
from autoloop_daemon.storage.postgres.db import Database
from autoloop_daemon.storage.postgres.schema import migrate
from tests.helpers.blocking import no_blocking
from tests.helpers.cluster import DSN_VAR, NO_DSN, fresh_database
from tests.helpers.process import kill_leftovers


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run every `@pytest.mark.anyio` test on asyncio only."""
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def _child_bytecode_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Let the session's child processes (every autoloopd, fake, CLI) cache their compiled
    bytecode in a private directory. Where PYTHONDONTWRITEBYTECODE is set and no
    __pycache__ sits in the checkout, each of the suite's hundreds of autoloopd starts would
    otherwise compile the whole package again (~15% of its start-up). Children only: this
    process read both variables when it started; nothing is written into the checkout."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")}
    os.environ["PYTHONPYCACHEPREFIX"] = str(tmp_path_factory.mktemp("pycache"))
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def blockbuster() -> Iterator[BlockBuster]:
    """blockbuster active for the test (tests/helpers/blocking.py): a blocking call on the
    event loop, from autoloopd's code or the test's, raises BlockingError. Sync fixtures
    set up before it; a test may add `blockbuster.functions[...].can_block_in(...)`."""
    with no_blocking() as buster:
        yield buster


@pytest.fixture(autouse=True)
def _no_blocking_marker(request: pytest.FixtureRequest) -> None:
    """Tests marked `no_blocking` (most in-process anyio tests) get the `blockbuster`
    fixture."""
    if request.node.get_closest_marker("no_blocking") is not None:
        request.getfixturevalue("blockbuster")


@pytest.fixture(autouse=True)
def _no_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: SIGKILL every autoloopd it started with `start_autoloopd` that still
    runs and, for a test using tmp_path, every process of a run under tmp_path (found by its
    run marker) -- what a failed test could not stop (its own processes only)."""
    uses_tmp_path = "tmp_path" in request.fixturenames
    tmp_path = request.getfixturevalue("tmp_path") if uses_tmp_path else None
    yield
    kill_leftovers(None if tmp_path is None else str(tmp_path))


@pytest.fixture
def captured() -> Iterator[list[dict[str, Any]]]:
    """structlog events of the test (loggers uncached, so capture_logs sees every one)."""
    configure_logging("json", "debug", cache=False)
    try:
        with structlog.testing.capture_logs() as logs:
            yield logs
    finally:
        structlog.reset_defaults()


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for the test (skips without AUTOLOOPD_TEST_DSN)."""
    yield from fresh_database()


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Database]:
    """An open pool (8 connections) on a fresh database with the cluster schema."""
    database = Database(pg_dsn, max_size=8)
    await database.open()
    await migrate(database)
    yield database
    await database.close()


def pytest_report_header() -> str:
    """Say up front whether the cluster tests run (a skipped suite must not look passed)."""
    if os.environ.get(DSN_VAR):
        return f"cluster tests: on the PostgreSQL of {DSN_VAR}"
    return f"cluster tests: SKIPPED, {NO_DSN}"
