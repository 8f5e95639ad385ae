"""The control channel's settings: the unix socket, the optional TCP listener and its token.

`check_control` resolves `daemon.control_socket` and `daemon.http_token_file` against the
config file's directory and refuses (ConfigError, one line naming the key) a TCP listener on
a non-loopback address without a token, or a socket path too long for the kernel.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

from autoloop_daemon.exceptions import ConfigError

SOCKET_NAME = "autoloopd.sock"
# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
MAX_TOKEN_BYTES = 4096


def parse_listen(text: str) -> tuple[str, int]:
    """`"127.0.0.1:8765"` or `"[::1]:8765"` as (host, port); ValueError when malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:8765), got {text!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, got {port}")
    return host.strip("[]"), port


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_socket(state_dir: Path) -> Path:
    """`<state_dir>/autoloopd.sock`."""
    return state_dir / SOCKET_NAME


def socket_path_fits(path: Path) -> bool:
    """True when the kernel accepts `path` as a unix socket address."""
    return len(str(path).encode()) <= MAX_SOCKET_PATH_BYTES


def read_token(path: Path) -> str:
    """The bearer token in `path` (surrounding whitespace removed); OSError, ValueError.

    Only a regular file of at most `MAX_TOKEN_BYTES` is read: a FIFO, a device or a
    directory there is refused at once (opened without blocking, checked before reading).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        data = os.read(fd, MAX_TOKEN_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_BYTES:
        raise ValueError(f"larger than {MAX_TOKEN_BYTES} bytes")
    token = data.decode("utf-8").strip()
    if not token:
        raise ValueError("the file is empty")
    return token


def token_mode_problem(path: Path) -> str | None:
    """A warning when the token file can be read by its group or others (else None)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    if mode & 0o044:
        return f"{path} has mode {mode:04o}: readable by group or others (chmod 600 it)"
    return None


def check_control(
    *,
    control_socket: Path | None,
    http_listen: str | None,
    http_token_file: Path | None,
    base: Path,
    shown: str,
) -> tuple[Path | None, Path | None]:
    """The resolved (control_socket, http_token_file); ConfigError for a refused setting."""
    sock = None
    if control_socket is not None:
        sock = (base / control_socket.expanduser()).resolve()
        if not socket_path_fits(sock):
            raise ConfigError(
                f"{shown}: daemon.control_socket: path longer than "
                f"{MAX_SOCKET_PATH_BYTES} bytes: {sock}"
            )
    token_file = None
    if http_token_file is not None:
        token_file = (base / http_token_file.expanduser()).resolve()
        try:
            read_token(token_file)
        except (OSError, ValueError) as exc:
            problem = getattr(exc, "strerror", None) or exc
            raise ConfigError(
                f"{shown}: daemon.http_token_file: cannot read a token from {token_file}: {problem}"
            ) from None
    if http_listen is not None:
        try:
            host, _ = parse_listen(http_listen)
        except ValueError as exc:
            raise ConfigError(f"{shown}: daemon.http_listen: {exc}") from None
        if token_file is None and not is_loopback(host):
            raise ConfigError(
                f"{shown}: daemon.http_listen: {host} is not a loopback address; "
                "set daemon.http_token_file to require a bearer token"
            )
    return sock, token_file
