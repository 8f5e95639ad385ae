"""The `autoloopd` command: which form or subcommand runs, and the exit codes of errors.

The forms:
  autoloopd --config FILE [--check]          the daemon (every target in FILE)
  autoloopd --target DIR --state-root DIR    one target, the original script's flags
  autoloopd status (--config FILE | --state-root DIR) [--json]
  autoloopd ctl (--config FILE | --socket PATH) VERB [TARGET] [options]
  autoloopd report (--config FILE | --state-root DIR) --output FILE [--format html|md]
  autoloopd db (init | migrate | --check) [--config FILE]   the cluster database's schema
  autoloopd review list (--config FILE | --state-root DIR) [--json]   candidates held back

Only the module of the chosen form is imported (the first two: cli/run.py): `status` and
`ctl` ask a running daemon and must not pay for importing the settings schema (pydantic),
structlog or the runtime (`python -X importtime -m autoloop_daemon status ...` shows it).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from autoloop_daemon import early_signals
from autoloop_daemon.exceptions import (
    ClusterError,
    ConfigError,
    StateCorruptError,
    StateLockedError,
    StateWriteError,
)
from autoloop_daemon.exit_codes import (
    EXIT_CONFIG,
    EXIT_DATAERR,
    EXIT_INTERRUPTED,
    EXIT_IOERR,
    EXIT_PIPE,
    EXIT_TEMPFAIL,
)

FORMS = "autoloop_daemon.cli.run"
SUBCOMMANDS = {
    "status": "autoloop_daemon.cli.status",
    "ctl": "autoloop_daemon.cli.ctl",
    "report": "autoloop_daemon.report.cli",
    "db": "autoloop_daemon.cli.db",
    "review": "autoloop_daemon.cli.review",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run autoloopd with `argv` (default: sys.argv[1:]); returns the exit code.

    Every form reports a user's error the same way: one line on stderr, a distinct exit code
    (a subcommand may raise ConfigError and friends; they are mapped here).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            module = importlib.import_module(SUBCOMMANDS[argv[0]])
            argv = argv[1:]
        else:
            early_signals.hold()  # before the runtime's imports (~0.7 s of CPU)
            module = importlib.import_module(FORMS)
        code: int = module.main(argv)
        return code
    except ConfigError as exc:
        report_error(str(exc))
        return EXIT_CONFIG
    except StateLockedError as exc:
        report_error(str(exc))
        return EXIT_TEMPFAIL
    except StateCorruptError as exc:
        report_error(f"{exc} (left untouched)")
        return EXIT_DATAERR
    except StateWriteError as exc:
        report_error(str(exc))
        return EXIT_IOERR
    except ClusterError as exc:  # the cluster's database is unreachable or has the wrong schema
        report_error(str(exc))
        return EXIT_TEMPFAIL
    except KeyboardInterrupt:  # a Ctrl+C before the signal handler was installed
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `autoloopd status --all | head`: the reader had enough
        # Point stdout at /dev/null, so that the interpreter's last flush is quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_PIPE


def report_error(message: str) -> None:
    """A user's error: one line on stderr."""
    print(f"autoloopd: {message}", file=sys.stderr, flush=True)
