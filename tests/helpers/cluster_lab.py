"""`ClusterLab`: several real `autoloopd` daemons ("hosts") on one machine sharing one fresh
PostgreSQL database, each with its own state directory and host id, and SQL on that
database for the tests' checks."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.helpers.cluster import fresh_database
from tests.helpers.config import write_config
from tests.helpers.daemon import Daemon
from tests.helpers.process import AUTOLOOPD


class ClusterLab:
    """One test's cluster: `skills/`, one config file, one state dir per host."""

    def __init__(self, root: Path, dsn: str, *, lease_s: float = 3.0, renew_s: float = 0.5):
        """Lay out `root`; nothing runs until `init` and `start`."""
        self.root = root
        self.dsn = dsn
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.skills = root / "skills"
        self.skills.mkdir(parents=True, exist_ok=True)
        self.config = root / "autoloopd.toml"
        self.daemons: dict[str, Daemon] = {}

    def skill(self, name: str) -> Path:
        """The directory of target `name` (created)."""
        path = self.skills / name
        path.mkdir(exist_ok=True)
        return path

    def state_dir(self, host: str) -> Path:
        """Host `host`'s state directory (its journal)."""
        return self.root / f"state-{host}"

    def write(self, targets: Sequence[Mapping[str, Any]], **sections: Any) -> Path:
        """The one config file every host uses (`[cluster]` filled in)."""
        cluster = {
            "dsn": self.dsn,
            "lease_seconds": self.lease_s,
            "renew_seconds": self.renew_s,
            **sections.pop("cluster", {}),
        }
        daemon = {"state_dir": str(self.root / "state"), **sections.pop("daemon", {})}
        return write_config(
            self.config, targets=targets, daemon=daemon, cluster=cluster, **sections
        )

    def init(self) -> None:
        """`autoloopd db init` on the lab's database."""
        done = subprocess.run(
            [*AUTOLOOPD, "db", "init", "--config", str(self.config)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    def start(self, host: str, env: Mapping[str, str] | None = None) -> Daemon:
        """Start host `host`: the shared config, its own state dir and host id."""
        daemon = Daemon(
            self.config,
            self.root / f"{host}.out",
            env={
                "AUTOLOOPD_CLUSTER__HOST_ID": host,
                "AUTOLOOPD_DAEMON__STATE_DIR": str(self.state_dir(host)),
                **(env or {}),
            },
        )
        self.daemons[host] = daemon
        return daemon

    def sql(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Rows of `statement` on the lab's database (a new connection each time)."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return list(cur.fetchall()) if cur.description else []

    def stop_all(self) -> None:
        """Stop every host still running (SIGTERM, then SIGKILL)."""
        for daemon in self.daemons.values():
            if daemon.running():
                try:
                    daemon.stop(timeout=20)
                except Exception:
                    daemon.proc.kill()
                    daemon.proc.wait(10)


def cluster_lab(tmp_path: Path) -> Iterator[ClusterLab]:
    """A lab on a fresh database with the schema, its daemons stopped afterwards (a
    fixture's body: `yield from`; skips without a test database)."""
    for dsn in fresh_database():
        lab = ClusterLab(tmp_path, dsn)
        yield lab
        lab.stop_all()
