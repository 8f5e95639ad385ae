"""The daemon's control socket from the config's `[daemon]` table alone, with no pydantic.

`autoloopd status` and `ctl` only need the socket to ask a running daemon; validating
10,000 `[[targets]]` takes seconds and importing the settings schema (pydantic) most of a
second. `quick_socket` reads the `[daemon]` table by itself and checks it by rules at least
as strict as `DaemonSettings` (tests/test_status_quick.py pins that every table accepted
here validates there and gives the same socket); whenever it could differ it gives up
(None) and the caller reads the whole config.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from autoloop_daemon.config.control import default_socket, socket_path_fits

# config/settings.py: ENV_PREFIX and DaemonSettings' defaults (a test checks they agree).
ENV_PREFIX = "AUTOLOOPD_"
DEFAULT_STATE_DIR = Path("/var/lib/autoloopd")

_TABLE_HEADER = re.compile(r"^\s*\[")
_DAEMON_HEADER = re.compile(r"^\s*\[\s*daemon\s*\]\s*(#.*)?$")
_DAEMON_ELSEWHERE = re.compile(r"^\s*\"?daemon\"?\s*[.=]", re.MULTILINE)


def _path_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and "\0" not in value


def _number(low: float, high: float, *, integer: bool) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
            return False
        return math.isfinite(value) and low <= value <= high

    return check


# Every key of DaemonSettings, each with a check no looser than the schema's.
DAEMON_CHECKS: dict[str, Callable[[Any], bool]] = {
    "state_dir": _path_text,
    "max_concurrent_iterations": _number(1, 10_000, integer=True),
    "shutdown_grace_seconds": _number(0, 31_536_000, integer=False),
    "log_format": lambda v: isinstance(v, str) and v in ("auto", "json", "console"),
    "log_level": lambda v: isinstance(v, str) and v in ("debug", "info", "warning", "error"),
    "control_socket": _path_text,
    "http_listen": lambda v: isinstance(v, str),
    "http_token_file": _path_text,
    "exit_when_idle": lambda v: v == "auto" if isinstance(v, str) else isinstance(v, bool),
}


def daemon_table_ok(table: Mapping[str, Any]) -> bool:
    """True when every key of the `[daemon]` table `table` is known and its value passes."""
    return all(key in DAEMON_CHECKS and DAEMON_CHECKS[key](v) for key, v in table.items())


def quick_socket(config: Path, environ: Mapping[str, str]) -> Path | None:
    """The control socket of `config` read from its `[daemon]` table alone, or None.

    None (read the whole config) whenever this shortcut could differ from `load_config`:
    a `daemon` table written any other way, an `AUTOLOOPD_DAEMON__*` override, a table that
    does not parse or that `daemon_table_ok` refuses, or a socket path too long.
    """
    if any(k.upper().startswith(f"{ENV_PREFIX}DAEMON") for k in environ):
        return None
    try:
        text = config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _DAEMON_HEADER.match(line)), None)
    head = "\n".join(lines[: len(lines) if start is None else start])
    if start is None or _DAEMON_ELSEWHERE.search(head):
        return None
    end = next(
        (j for j in range(start + 1, len(lines)) if _TABLE_HEADER.match(lines[j])), len(lines)
    )
    try:
        table = tomllib.loads("\n".join(lines[start + 1 : end]))
        if not daemon_table_ok(table):
            return None
        base = config.resolve().parent
        if "control_socket" in table:
            return (base / Path(table["control_socket"]).expanduser()).resolve()
        state_dir = Path(table.get("state_dir", DEFAULT_STATE_DIR))
        sock = default_socket((base / state_dir.expanduser()).resolve())
    except (ValueError, OSError, RuntimeError):  # tomllib's errors included
        return None
    return sock if socket_path_fits(sock) else None
