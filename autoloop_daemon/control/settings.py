"""From the configuration to the control channel's settings and the idle policy (the socket
from the `[daemon]` table alone, for `status` and `ctl`, is control/quick_socket.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from autoloop_daemon.config.control import default_socket, socket_path_fits
from autoloop_daemon.config.loader import AppConfig


@dataclass(frozen=True, slots=True)
class ControlSettings:
    """Where to listen; `socket_path` None: no unix socket."""

    socket_path: Path | None
    http_listen: str | None = None
    http_token_file: Path | None = None


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
