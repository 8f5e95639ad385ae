"""A small HTTP/1.1 client of the control API over its unix socket (standard library only).

`request` returns the decoded JSON and the HTTP status (`request_bytes` the body's bytes),
or raises `NotRunningError` when no daemon answers on the socket and `PermissionError` when
the kernel refuses the connection.

One request per connection (`Connection: close`), its answer read to the end. Not
`http.client`: importing it (with `email.parser` and `ssl`) took ~20 ms of every `status`
and `ctl` run, whose whole start is ~80 ms (issue 24: `status` at 10,000 targets within
0.3 s). The answer is read as HTTP/1.1 frames it: by `Content-Length`, chunked, or to the
end of the connection.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

TIMEOUT_S = 30.0
READ_SIZE = 1 << 20
MAX_HEAD = 64 * 1024  # the status line and headers (the daemon sends a few hundred bytes)
_FORBIDDEN_IN_URL = frozenset(map(chr, range(0x21))) | {"\x7f"}  # controls, space


class NotRunningError(Exception):
    """No daemon answers on the control socket."""


class BadAnswerError(ValueError):
    """What came back on the socket is not an HTTP/1.1 answer."""


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
    as sent: for an answer printed as it is, never parsed). ValueError for a URL with a
    space or a control character."""
    if not url.startswith("/") or any(c in _FORBIDDEN_IN_URL for c in url):
        raise ValueError(f"not a URL path to send: {url!r}")
    message = _message(method, url, None if body is None else json.dumps(body).encode())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall(message)
            answer = _read_all(sock)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotRunningError(f"no daemon answers on {path} ({exc.strerror})") from None
        except PermissionError:
            raise
        except OSError as exc:
            raise NotRunningError(f"the daemon on {path} did not answer: {exc}") from None
    finally:
        sock.close()
    try:
        return parse_answer(answer)
    except BadAnswerError as exc:
        raise NotRunningError(f"the daemon on {path} did not answer: {exc}") from None


def _message(method: str, url: str, payload: bytes | None) -> bytes:
    head = [f"{method} {url} HTTP/1.1", "Host: localhost", "Connection: close"]
    if payload is not None:
        head.append("Content-Type: application/json")
    if payload is not None or method in ("POST", "PUT", "PATCH"):
        head.append(f"Content-Length: {0 if payload is None else len(payload)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + (payload or b"")


def _read_all(sock: socket.socket) -> bytes:
    """Everything the daemon sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(READ_SIZE):
        chunks.append(chunk)
    return b"".join(chunks)


def parse_answer(answer: bytes) -> tuple[int, bytes]:
    """(status, body) of a whole HTTP/1.1 answer (BadAnswerError when it is none, or cut
    short)."""
    end = answer.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        raise BadAnswerError("no complete HTTP head" if answer else "nothing came back")
    status_line, *lines = answer[:end].decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise BadAnswerError(f"not an HTTP/1.1 status line: {status_line[:80]!r}")
    headers = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise BadAnswerError(f"not a header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    body = answer[end + 4 :]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return int(code), _unchunk(body)
    length = headers.get("content-length")
    if length is None:
        return int(code), body  # to the end of the connection
    if not length.isdigit() or len(body) < int(length):
        raise BadAnswerError(f"the body is cut short ({len(body)} of {length} bytes)")
    return int(code), body[: int(length)]


def _unchunk(body: bytes) -> bytes:
    """The data of a chunked body (its trailers ignored)."""
    parts: list[bytes] = []
    at = 0
    while True:
        line_end = body.find(b"\r\n", at)
        if line_end < 0:
            raise BadAnswerError("a chunked body is cut short")
        size_text = body[at:line_end].split(b";", 1)[0].strip()
        if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
            raise BadAnswerError(f"not a chunk size: {size_text[:20]!r}")
        size = int(size_text, 16)
        if size == 0:
            return b"".join(parts)
        start = line_end + 2
        if len(body) < start + size + 2:
            raise BadAnswerError("a chunked body is cut short")
        parts.append(body[start : start + size])
        at = start + size + 2
