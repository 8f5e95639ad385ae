"""`autoloopd db init|migrate|--check` and the `[cluster]` table, through the real binary
and the real config loader."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from autoloop_daemon.config.loader import load_config
from autoloop_daemon.exceptions import ConfigError
from autoloop_daemon.exit_codes import EXIT_CONFIG, EXIT_DATAERR, EXIT_OK, EXIT_TEMPFAIL
from autoloop_daemon.storage.postgres.schema import SCHEMA_VERSION
from tests.helpers.process import AUTOLOOPD


def _db(*args: str, dsn: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOLOOPD_")}
    if dsn is not None:
        env["AUTOLOOPD_CLUSTER__DSN"] = dsn
    return subprocess.run([*AUTOLOOPD, "db", *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


def test_db_init_then_check_then_migrate(pg_dsn: str) -> None:
    before = _db("--check", dsn=pg_dsn)
    assert before.returncode == EXIT_DATAERR and "run autoloopd db init" in before.stderr
    assert "db init" in _db("migrate", dsn=pg_dsn).stderr  # migrate never creates
    done = _db("init", dsn=pg_dsn)
    assert done.returncode == EXIT_OK and "upgraded from version 0" in done.stdout
    check = _db("--check", dsn=pg_dsn)
    assert check.returncode == EXIT_OK and f"schema version {SCHEMA_VERSION}" in check.stdout
    again = _db("migrate", dsn=pg_dsn)
    assert again.returncode == EXIT_OK and "already at version" in again.stdout


def test_db_check_on_an_unreachable_server_is_one_line_and_tempfail() -> None:
    result = _db("--check", dsn="postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode == EXIT_TEMPFAIL
    assert result.stderr.count("\n") == 1 and "cannot connect" in result.stderr


def test_db_without_a_dsn_names_what_to_give() -> None:
    result = _db("--check")
    assert result.returncode == EXIT_CONFIG and "AUTOLOOPD_CLUSTER__DSN" in result.stderr


def _config(tmp_path: Path, cluster: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'[cluster]\n{cluster}\n[[targets]]\nname = "t"\npath = "{tmp_path}"\n')
    return path


def test_cluster_table_defaults_and_environment(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, ""), {})
    assert not config.cluster.enabled and config.cluster.host  # off; host id = host name
    env = {"AUTOLOOPD_CLUSTER__DSN": "postgresql://u@h/d"}
    config = load_config(_config(tmp_path, 'host_id = "h1"'), env)
    assert config.cluster.dsn == "postgresql://u@h/d" and config.cluster.host == "h1"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("lease_seconds = 20\nrenew_seconds = 10", "at most a third of lease_seconds"),
        ('dsn = "mysql://x"', "cluster.dsn"),
        ("leese_seconds = 5", "cluster.leese_seconds"),
    ],
)
def test_cluster_table_mistakes_are_one_line(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        load_config(_config(tmp_path, text), {})
    assert "\n" not in str(caught.value)
