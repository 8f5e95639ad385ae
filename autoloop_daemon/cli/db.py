"""`autoloopd db`: create, upgrade and check the cluster database's schema.

  autoloopd db init    [--config FILE]   create the schema (or upgrade it); idempotent
  autoloopd db migrate [--config FILE]   upgrade an existing schema; refuses a newer one
  autoloopd db --check [--config FILE]   connect and verify the schema's version

The DSN is `[cluster] dsn` of the config file, or AUTOLOOPD_CLUSTER__DSN (never a
command-line argument: a password there is visible to every user in `ps`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from autoloop_daemon.exceptions import ConfigError
from autoloop_daemon.exit_codes import EXIT_CONFIG, EXIT_DATAERR, EXIT_OK, EXIT_TEMPFAIL, EXIT_USAGE

DSN_ENV = "AUTOLOOPD_CLUSTER__DSN"


def build_parser() -> argparse.ArgumentParser:
    """The `db` sub-command's arguments."""
    parser = argparse.ArgumentParser(prog="autoloopd db", description=__doc__.split("\n")[0])
    parser.add_argument("action", nargs="?", choices=["init", "migrate"])
    parser.add_argument("--check", action="store_true", help="verify connection and schema")
    parser.add_argument("--config", type=Path, help="the daemon's config file ([cluster] dsn)")
    return parser


def _dsn(config: Path | None) -> str:
    if config is not None:
        from autoloop_daemon.config.loader import load_config

        dsn = load_config(config).cluster.dsn
        if dsn is None:
            raise ConfigError(f"{config}: cluster.dsn: not set (cluster mode is off)")
        return dsn
    dsn = os.environ.get(DSN_ENV)
    if not dsn:
        raise ConfigError(f"no database: give --config FILE with [cluster] dsn, or set {DSN_ENV}")
    return dsn


async def _run(dsn: str, action: str | None, check_only: bool) -> str:
    from autoloop_daemon.storage.postgres.db import Database
    from autoloop_daemon.storage.postgres.schema import check, migrate

    db = Database(dsn)
    await db.open()
    try:
        if check_only:
            return f"cluster database reachable, schema version {await check(db)}"
        before, after = await migrate(db, create=action == "init")
        if before == after:
            return f"schema already at version {after}"
        return f"schema upgraded from version {before} to {after}"
    finally:
        await db.close()


def main(argv: Sequence[str]) -> int:
    """Run `autoloopd db ...`; one line on stdout (success) or stderr (the problem)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.action is None) == (not args.check):
        print("autoloopd db: give exactly one of init, migrate, --check", file=sys.stderr)
        return EXIT_USAGE
    from autoloop_daemon.storage.postgres.db import ClusterError

    try:
        message = anyio.run(_run, _dsn(args.config), args.action, args.check)
    except ConfigError as exc:
        print(f"autoloopd db: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ClusterError as exc:
        print(f"autoloopd db: {exc}", file=sys.stderr)
        unreachable = "connect" in str(exc) or "did not answer" in str(exc)
        return EXIT_TEMPFAIL if unreachable else EXIT_DATAERR
    print(message)
    return EXIT_OK
