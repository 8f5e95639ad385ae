"""From the configuration to the control channel's settings (the whole config, or its `[daemon]`
table alone for `autoloopd status`) and the idle policy."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import structlog

from autoloop_daemon.config.control import default_socket, socket_path_fits
from autoloop_daemon.config.loader import AppConfig
from autoloop_daemon.config.settings import ENV_PREFIX, DaemonSettings
from autoloop_daemon.runtime.control_server import ControlSettings


def socket_path(cfg: AppConfig) -> Path | None:
    """The control socket of `cfg`: `daemon.control_socket`, else `<state_dir>/autoloopd.sock`
    (None when that default is too long for a unix socket address)."""
    if cfg.daemon.control_socket is not None:
        return cfg.daemon.control_socket
    path = default_socket(cfg.daemon.state_dir)
    return path if socket_path_fits(path) else None


def control_settings(cfg: AppConfig) -> ControlSettings:
    """The listeners the daemon of `cfg` opens."""
    path = socket_path(cfg)
    if path is None:
        structlog.get_logger("autoloopd").warning(
            "control_socket_unavailable",
            state_dir=str(cfg.daemon.state_dir),
            hint="the default socket path is too long; set daemon.control_socket",
        )
    return ControlSettings(path, cfg.daemon.http_listen, cfg.daemon.http_token_file)


def stay_up_when_idle(
    exit_when_idle: Literal["auto"] | bool, environ: Mapping[str, str] | None = None
) -> bool:
    """True when the daemon stays up after every target stopped: `exit_when_idle = false`,
    or `"auto"` under systemd (NOTIFY_SOCKET set)."""
    if exit_when_idle == "auto":
        env = os.environ if environ is None else environ
        return bool(env.get("NOTIFY_SOCKET"))
    return not exit_when_idle


_TABLE_HEADER = re.compile(r"^\s*\[")
_DAEMON_HEADER = re.compile(r"^\s*\[\s*daemon\s*\]\s*(#.*)?$")
_DAEMON_ELSEWHERE = re.compile(r"^\s*\"?daemon\"?\s*[.=]", re.MULTILINE)


def quick_socket(config: Path, environ: Mapping[str, str]) -> Path | None:
    """The control socket of `config` read from its `[daemon]` table alone, or None.

    Validating 10,000 `[[targets]]` takes seconds; asking a running daemon needs only its
    socket. None (read the whole config) whenever this shortcut could differ from
    `load_config`: a `daemon` table written any other way, an `AUTOLOOPD_DAEMON__*`
    override, a table that does not parse or validate, or a socket path too long.
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
        daemon = DaemonSettings.model_validate(tomllib.loads("\n".join(lines[start + 1 : end])))
        base = config.resolve().parent
        if daemon.control_socket is not None:
            return (base / daemon.control_socket.expanduser()).resolve()
        sock = default_socket((base / daemon.state_dir.expanduser()).resolve())
    except (ValueError, OSError, RuntimeError):  # pydantic's and tomllib's errors included
        return None
    return sock if socket_path_fits(sock) else None
