"""Talking to a running daemon's control API from tests: `ctl` runs `autoloopd ctl`, `api`
sends one HTTP request over the unix socket and returns (status, JSON); `raw_get` returns
the body as text (`/metrics`, the dashboard)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

from autoloop_daemon.control.client import request
from tests.helpers.process import run_autoloopd


def ctl(config: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`autoloopd ctl --config CONFIG ARGS...`, run to completion."""
    return run_autoloopd(["ctl", "--config", str(config), *args], timeout=timeout)


def api(sock: Path, method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """One request to the daemon on `sock`: (HTTP status, decoded JSON)."""
    return request(sock, method, url, body, timeout=30.0)


def target_status(sock: Path, name: str) -> dict[str, Any]:
    """Target `name`'s entry of `GET /api/status`."""
    code, payload = api(sock, "GET", "/api/status")
    assert code == 200, payload
    by_name = {t["target"]: t for t in payload["targets"]}
    return dict(by_name[name])


def raw_get(sock: Path, url: str) -> tuple[int, str]:
    """`GET url` over the unix socket `sock`: (HTTP status, the body as text)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(sock))
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode("utf-8", "replace")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
