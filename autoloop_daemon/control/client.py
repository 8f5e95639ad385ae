"""A small HTTP client of the control API over its unix socket (standard library only).

`request` returns the decoded JSON and the HTTP status (`request_bytes` the body's bytes),
or raises `NotRunningError` when no daemon answers on the socket and `PermissionError` when
the kernel refuses the connection.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

TIMEOUT_S = 30.0


class NotRunningError(Exception):
    """No daemon answers on the control socket."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def request(
    path: Path,
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    *,
    timeout: float = TIMEOUT_S,
) -> tuple[int, Any]:
    """Send one request to the daemon on the unix socket `path`; (status, JSON body)."""
    status, raw = request_bytes(path, method, url, body, timeout=timeout)
    try:
        return status, json.loads(raw or b"null")
    except ValueError:
        return status, {"error": raw.decode("utf-8", "replace")[:200]}


def request_bytes(
    path: Path,
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    *,
    timeout: float = TIMEOUT_S,
) -> tuple[int, bytes]:
    """Send one request to the daemon on the unix socket `path`; (status, the body's bytes
    as sent: for an answer printed as it is, never parsed)."""
    conn = _UnixConnection(path, timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            conn.request(method, url, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotRunningError(f"no daemon answers on {path} ({exc.strerror})") from None
        except PermissionError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise NotRunningError(f"the daemon on {path} did not answer: {exc}") from None
    finally:
        conn.close()
    return response.status, raw
