"""The control client's HTTP/1.1 (control/client.py) against a real unix socket whose other
end answers as given: by length, chunked, to the end, cut short, or not HTTP at all."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from autoloop_daemon.control.client import (
    NotRunningError,
    parse_answer,
    request,
    request_bytes,
)
from tests.helpers.daemon import Lab, dry_target
from tests.helpers.process import run_autoloopd


class OneAnswer:
    """A unix socket that answers each connection with `answer` once the request's head
    has come, then closes it; `requests` holds what came."""

    def __init__(self, path: Path, answer: bytes) -> None:
        self.path, self.answer = path, answer
        self.requests: list[bytes] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next(
                    (int(h.split(b":")[1]) for h in head.split(b"\r\n")
                     if h.lower().startswith(b"content-length:")),
                    0,
                )  # fmt: skip
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + rest)
                conn.sendall(self.answer)

    def close(self) -> None:
        self._sock.close()


Serve = Callable[[bytes], OneAnswer]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Make `OneAnswer` sockets under tmp_path; closed at the end."""
    servers: list[OneAnswer] = []

    def make(answer: bytes) -> OneAnswer:
        server = OneAnswer(tmp_path / f"s{len(servers)}.sock", answer)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def test_an_answer_by_length_chunked_or_to_the_end_gives_its_body(serve: Serve) -> None:
    """The three ways HTTP/1.1 frames a body; a POST sends its JSON with its length."""
    by_length = serve(b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"a": 1}   extra')
    assert request(by_length.path, "GET", "/api/x") == (200, {"a": 1})
    chunked = serve(
        b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4;ext=1\r\n{"a"\r\nA\r\n: "\xc3\xa9 x" }\r\n0\r\nTrailer: y\r\n\r\n'
    )
    assert request(chunked.path, "POST", "/api/y", {"k": [1]}) == (404, {"a": "é x"})
    sent = chunked.requests[0]
    assert sent.startswith(b"POST /api/y HTTP/1.1\r\n")
    assert b"Content-Length: 10\r\n" in sent and sent.endswith(b'\r\n\r\n{"k": [1]}')
    to_end = serve(b"HTTP/1.0 500 Oops\r\nX: 1\r\n\r\nnot json")
    assert request_bytes(to_end.path, "GET", "/") == (500, b"not json")
    assert request(to_end.path, "GET", "/") == (500, {"error": "not json"})
    bodiless = serve(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
    assert request(bodiless.path, "POST", "/api/reload") == (204, None)
    assert b"Content-Length: 0\r\n" in bodiless.requests[0]


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"garbage without a head",
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nab\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_what_is_not_a_whole_answer_says_the_daemon_did_not_answer(
    serve: Serve, answer: bytes
) -> None:
    """Nothing, garbage, another protocol, a bad status line or header, a body cut short
    or a bad chunk: NotRunningError naming the socket, never a traceback or a short body."""
    server = serve(answer)
    with pytest.raises(NotRunningError, match="did not answer"):
        request_bytes(server.path, "GET", "/api/status")


def test_no_socket_and_a_bad_url_are_told_apart(tmp_path: Path) -> None:
    """No daemon: NotRunningError; a URL with a space or a control character is refused
    before anything is sent."""
    with pytest.raises(NotRunningError, match="no daemon answers"):
        request(tmp_path / "none.sock", "GET", "/api/status")
    for url in ("/api/targets/a b/stop", "/x\r\nHost: evil", "api/status"):
        with pytest.raises(ValueError, match="not a URL path"):
            request(tmp_path / "none.sock", "GET", url)


def test_parse_answer_keeps_a_large_body_whole() -> None:
    """A 6 MB body (a 10,000-target status report) comes back whole, by length."""
    body = b"x" * 6_000_000
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    assert parse_answer(answer) == (200, body)


def test_ctl_sends_a_target_name_with_a_space_and_is_told_it_is_unknown(
    tmp_path: Path,
) -> None:
    """`ctl stop "a b"` on a running daemon: the name is sent percent-encoded, and the
    daemon answers that there is no such target (exit 2), not a traceback."""
    lab = Lab(tmp_path)
    lab.write([dry_target(lab, "alpha")])
    daemon = lab.start()
    try:
        daemon.wait_event("control_socket_listening")
        done = run_autoloopd(["ctl", "--config", str(lab.config), "stop", "a b"])
        assert "Traceback" not in done.stderr
        assert "a b" in done.stderr and "unknown" in done.stderr.lower(), done.stderr
        assert done.returncode == 2, done.stderr
    finally:
        assert daemon.stop() == 0
