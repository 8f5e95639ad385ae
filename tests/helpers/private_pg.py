"""A private PostgreSQL server for one test (`.ci/postgres start`, `stop`, `restart DIR`):
the chaos test that restarts its database must not disturb the suite's shared server."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CI_POSTGRES = REPO / ".ci" / "postgres"


def postgres_available() -> str | None:
    """Why a private PostgreSQL cannot be started here (None: it can)."""
    if not any(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        return "needs PostgreSQL's server binaries in /usr/lib/postgresql/*/bin (apt postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "needs runuser to run PostgreSQL as nobody"
    return None


class PrivatePostgres:
    """A throwaway PostgreSQL server of one test (.ci/postgres start/stop/restart), so that
    stopping it disturbs no other test. Its directory is in /tmp directly: run as root,
    the server runs as `nobody`, which must reach it (pytest's tmp_path is root's only)."""

    def __init__(self) -> None:
        """Nothing runs until `start`."""
        self.dir = Path(tempfile.mkdtemp(prefix="autoloopd-chaos-pg-"))
        self.dsn = ""

    def _ci(self, command: str) -> str:
        done = subprocess.run(
            [str(CI_POSTGRES), command, str(self.dir)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f".ci/postgres {command} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def start(self) -> str:
        """Initialise and start the server; its DSN."""
        self.dsn = self._ci("start")
        return self.dsn

    def stop(self) -> None:
        """Stop it (fast: open connections are cut)."""
        self._ci("stop")

    def restart(self) -> None:
        """Start it again on the same port."""
        assert self._ci("restart") == self.dsn

    def close(self) -> None:
        """Stop it and delete its directory."""
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            self._ci("stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started private server, stopped and deleted afterwards."""
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()
