"""Hostile HTTP clients for the control API: raw bytes over a unix or TCP socket, bodies
that never arrive, headers that never end (issue 19, "Control API")."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any


def connect(where: Path | int, timeout: float = 30.0) -> socket.socket:
    """A connected socket: the unix socket at `where`, or 127.0.0.1:`where`. A unix socket
    whose backlog is full answers EAGAIN at once: tried again, as a client would, for up to
    `timeout`."""
    if isinstance(where, int):
        return socket.create_connection(("127.0.0.1", where), timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(where))
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
        except BaseException:
            sock.close()
            raise


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or the socket's timeout)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return b"".join(chunks)


def status_of(raw: bytes) -> tuple[int, Any]:
    """(HTTP status, decoded JSON body) of a whole response; (0, None) for nothing."""
    if not raw:
        return 0, None
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        decoded = json.loads(body) if body else None
    except ValueError:
        decoded = body.decode("utf-8", "replace")
    return int(head.split()[1]), decoded


def exchange(
    where: Path | int, method: str, url: str, body: bytes = b"", headers: tuple[str, ...] = ()
) -> tuple[int, Any]:
    """One request with `body` sent as is (no JSON encoding): (status, decoded body)."""
    head = [f"{method} {url} HTTP/1.1", "Host: x", "Connection: close", *headers]
    head.append(f"Content-Length: {len(body)}")
    with connect(where) as sock:
        # The server may answer (413) and close before taking all of it.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        return status_of(read_all(sock))


def trickle(sock: socket.socket, pieces: list[bytes], every_s: float) -> threading.Thread:
    """Send `pieces` one at a time, `every_s` apart, in a thread (stops when the server
    closes)."""

    def send() -> None:
        for piece in pieces:
            try:
                sock.sendall(piece)
            except OSError:
                return
            time.sleep(every_s)  # the client's pace, not a wait on the server

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread
