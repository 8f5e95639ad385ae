"""The `no_blocking` marker really fails a blocking call made on the event loop by autoloopd's
code (tests/helpers/blocking.py), and lets the same call pass in a worker thread."""

from __future__ import annotations

from pathlib import Path

import anyio.to_thread
import pytest
from blockbuster import BlockingError

from autoloop_daemon.storage.files import artifacts


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_a_blocking_read_by_the_daemon_on_the_loop_fails(tmp_path: Path) -> None:
    """A sync read of the iteration log called on the event loop raises BlockingError."""
    path = tmp_path / artifacts.LOG_NAME
    path.write_bytes(b"")
    with pytest.raises(BlockingError):
        artifacts.read_log(path)


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_the_same_read_in_a_worker_thread_passes(tmp_path: Path) -> None:
    """The same read through anyio.to_thread.run_sync is off the loop and allowed."""
    path = tmp_path / artifacts.LOG_NAME
    path.write_bytes(b"")
    assert await anyio.to_thread.run_sync(artifacts.read_log, path) == ([], 0)
