"""Serving the control API: a unix socket (mode 0660) and an optional TCP listener.

The sockets are created here, not by hypercorn, so that the unix socket's mode is set right
after `bind` and before `listen` (nobody outside the owner and group can connect in
between), and a stale socket left by a crash is replaced only when nothing answers on it.
hypercorn's `serve(..., shutdown_trigger=...)` runs inside the daemon's task group and leaves
the signal handlers alone. `ControlServer.run` reports readiness with `task_status.started()`
once every socket listens, and returns after `close()` (hypercorn must be shut down through
its trigger, not cancelled).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.utils import wrap_app

from autoloop_daemon.config.control import (
    parse_listen,
    read_token,
    socket_path_fits,
    token_mode_problem,
)
from autoloop_daemon.control.api import BearerAuth, build_app
from autoloop_daemon.control.peer_credentials import CredentialListener, TagPeer
from autoloop_daemon.control.request_limits import (
    HEADER_TIMEOUT_S,
    MAX_HEADER_BYTES,
    RequestLimits,
)
from autoloop_daemon.control.settings import ControlSettings
from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.exceptions import ConfigError, StateLockedError
from autoloop_daemon.observers.metrics import Metrics

log = structlog.get_logger("autoloopd.control")

SOCKET_MODE = 0o660
BACKLOG = 1024  # a burst of pollers queues in the kernel instead of being refused


def bind_unix(path: Path) -> socket.socket:
    """A listening unix socket at `path`, mode 0660 (group: the process's group).

    An existing socket that nothing answers on is a leftover and is replaced; one that
    answers belongs to another daemon: StateLockedError.
    """
    if not socket_path_fits(path):
        raise ConfigError(f"daemon.control_socket: path too long for a unix socket: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ConfigError(f"daemon.control_socket: {path} exists and is not a socket")
        if _answers(path):
            raise StateLockedError(f"another autoloopd serves the control socket {path}")
        path.unlink()

    def bind(sock: socket.socket) -> None:
        sock.bind(str(path))
        os.chmod(path, SOCKET_MODE)  # before listen(): no connection is accepted before it

    return _listening(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), bind)


def _listening(sock: socket.socket, bind: Callable[[socket.socket], None]) -> socket.socket:
    """`sock` bound by `bind`, listening and non-blocking; closed if any step fails."""
    try:
        bind(sock)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        probe.close()
    return True


def bind_tcp(listen: str) -> socket.socket:
    """A listening TCP socket on `HOST:PORT`."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def bind(sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))

    return _listening(socket.socket(family, socket.SOCK_STREAM), bind)


def _hypercorn_config() -> HypercornConfig:
    config = HypercornConfig()
    config.backlog = BACKLOG  # asyncio listens again on the socket with this one
    config.accesslog = None
    # Its own logger without a handler of its own: records reach the root logger, which
    # observers/logs.py sends through structlog (one JSON line, never a raw traceback).
    config.errorlog = logging.getLogger("hypercorn.error")
    config.errorlog.setLevel(logging.WARNING)  # not its "Running on ..." lines
    config.loglevel = "WARNING"
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = HEADER_TIMEOUT_S  # also closes a request whose headers stall
    config.h11_max_incomplete_size = MAX_HEADER_BYTES
    return config


class ControlServer:
    """The control API on its sockets, for as long as `run` is not cancelled."""

    def __init__(self, supervisor: Supervisor, metrics: Metrics, settings: ControlSettings):
        """Serve `supervisor`; nothing is bound until `run`."""
        self._supervisor = supervisor
        self._metrics = metrics
        self._settings = settings
        self._stop = anyio.Event()
        self._done = anyio.Event()
        self._running = False

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop serving and wait (shielded, at most `timeout_s`) until `run` has returned."""
        self._stop.set()
        if not self._running:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(timeout_s):
            await self._done.wait()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind, report started, serve until cancelled; the unix socket is removed after."""
        self._running = True
        s = self._settings
        app = RequestLimits(build_app(self._supervisor, self._metrics))
        servers: list[tuple[Any, socket.socket]] = []
        unix_path = s.socket_path
        unix_ino: int | None = None
        try:
            if unix_path is not None:
                sock = bind_unix(unix_path)
                unix_ino = unix_path.stat().st_ino
                servers.append((TagPeer(app), sock))
                log.info("control_socket_listening", path=str(unix_path), mode="0660")
            if s.http_listen is not None:
                token = None if s.http_token_file is None else _token(s.http_token_file)
                tcp = bind_tcp(s.http_listen)
                servers.append((app if token is None else BearerAuth(app, token), tcp))
                log.info("http_listening", address=s.http_listen, token=token is not None)
            async with anyio.create_task_group() as tg:
                for served, sock in servers:
                    tg.start_soon(self._serve_one, served, sock, self._stop)
                task_status.started()
        finally:
            self._done.set()
            for _, sock in servers:
                sock.close()
            if unix_path is not None and unix_ino is not None:
                _remove_if_ours(unix_path, unix_ino)

    @staticmethod
    async def _serve_one(app: Any, sock: socket.socket, stopped: anyio.Event) -> None:
        # hypercorn closes the socket it is given: give it a duplicate, ours is closed by us.
        # The unix socket's is wrapped so that each request knows its peer's uid.
        dup = socket.socket(sock.family, sock.type, fileno=os.dup(sock.fileno()))
        given: Any = CredentialListener(dup) if sock.family == socket.AF_UNIX else dup
        config = _hypercorn_config()
        await worker_serve(
            wrap_app(app, config.wsgi_max_body_size, "asgi"),
            config,
            sockets=Sockets(secure_sockets=[], insecure_sockets=[given], quic_sockets=[]),
            shutdown_trigger=stopped.wait,
        )


def _token(path: Path) -> str:
    """The bearer token of `path`, with a warning when others can read the file."""
    if (problem := token_mode_problem(path)) is not None:
        log.warning("token_file_readable", path=str(path), problem=problem)
    return read_token(path)


def _remove_if_ours(path: Path, ino: int) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_ino == ino:
            path.unlink()
