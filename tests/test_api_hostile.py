"""The control API against hostile clients (issue 19, "Control API"), on a real daemon:
values the state cannot hold, oversized and never-ending requests, duplicated headers, a
token file that is a FIFO, and a reload storm. Each is refused without harm, and every line
the daemon writes stays one JSON object."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from autoloop_daemon.control.request_limits import BODY_TIMEOUT_S, HEADER_TIMEOUT_S
from autoloop_daemon.exit_codes import EXIT_CONFIG, EXIT_USAGE
from tests.helpers.control import api, ctl, free_port, target_status
from tests.helpers.daemon import Daemon, Lab, dry_target
from tests.helpers.process import run_autoloopd
from tests.helpers.raw_http import connect, exchange, read_all, status_of, trickle
from tests.helpers.wait import wait_for

EXTEND = "/api/targets/alpha/extend"


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    """A fresh lab under tmp_path."""
    return Lab(tmp_path)


def _start(
    lab: Lab, extra: list[dict[str, Any]] | None = None, **daemon_keys: Any
) -> tuple[Daemon, Path]:
    targets = [dry_target(lab, "alpha"), *(extra or [])]
    lab.write(targets, daemon={"exit_when_idle": False, **daemon_keys})
    daemon = lab.start()
    daemon.wait_event("control_socket_listening")
    daemon.wait_event("iteration_finished", target="alpha")
    sock = lab.state_dir / "autoloopd.sock"
    wait_for(lambda: target_status(sock, "alpha")["phase"] == "cooldown", what="cooldown")
    return daemon, sock


def _all_json(daemon: Daemon) -> None:
    """Every line the daemon wrote is one JSON object (no traceback, no server banner)."""
    for line in daemon.text().splitlines():
        if line.strip():
            assert isinstance(json.loads(line), dict), line


def test_values_the_state_cannot_hold_are_400_and_change_nothing(lab: Lab) -> None:
    """NaN, Infinity, 1e400, 1e308, mistyped and deeply nested bodies are refused with 400
    (413 when over the size cap) naming the field; the state file, the status and the target
    are exactly as before; two extensions whose sum is over the bound: the second exits 2;
    the review route reads its body the same way."""
    daemon, sock = _start(lab)
    state_file = lab.state_root("alpha") / "autoloop_state.json"
    before = state_file.read_bytes()
    bad = {
        b'{"cost_usd": NaN}': "NaN",
        b'{"cost_usd": Infinity}': "Infinity",
        b'{"cost_usd": -Infinity}': "Infinity",
        b'{"cost_usd": 1e400}': "cost_usd",
        b'{"cost_usd": 1e308}': "cost_usd",
        b'{"iterations": 1e3}': "iterations",
        b'{"iterations": 2000000}': "iterations",
        b'{"iterations": ' + b"9" * 5000 + b"}": "not JSON",
        b'{"iterations": true}': "iterations",
        b'{"cost_usd": "5"}': "cost_usd",
        b"[" * 3000 + b"]" * 3000: "nested too deeply",
        b"[1]": "JSON object",
    }
    for body, named in bad.items():
        code, answer = exchange(sock, "POST", EXTEND, body)
        assert code == 400 and named in answer["error"], (body[:40], code, answer)
    code, answer = exchange(sock, "POST", EXTEND, b"[" * 100_000)
    assert code == 413 and "bytes" in answer["error"], answer
    assert state_file.read_bytes() == before
    alpha = target_status(sock, "alpha")
    assert (alpha["phase"], alpha["max_cost_usd"], alpha["max_iterations"]) == (
        "cooldown",
        50.0,
        50,
    ), alpha

    for value in ("nan", "inf", "1e308"):
        refused = ctl(lab.config, "extend", "alpha", "--cost", value)
        assert refused.returncode == EXIT_USAGE and "--cost" in refused.stderr, refused
    assert ctl(lab.config, "extend", "alpha", "--cost", "6e8").returncode == 0
    after_one = state_file.read_bytes()
    twice = ctl(lab.config, "extend", "alpha", "--cost", "6e8")
    assert twice.returncode == EXIT_USAGE and "cost_usd" in twice.stderr, twice
    assert state_file.read_bytes() == after_one
    assert target_status(sock, "alpha")["max_cost_usd"] == 50.0 + 6e8
    review = "/api/targets/alpha/review"
    json_type = ("Content-Type: application/json",)
    for body, named in {
        b"[" * 3000 + b"]" * 3000: "nested too deeply",
        b'{"verdict": NaN}': "NaN",
        b'{"verdict": 1}': "verdict",
    }.items():
        code, answer = exchange(sock, "POST", review, body, json_type)
        assert code == 400 and named in answer["error"], (body[:40], code, answer)
    assert api(sock, "GET", "/api/status")[0] == 200
    assert daemon.stop() == 0, daemon.text()[-3000:]
    assert not daemon.events("target_crashed")
    _all_json(daemon)


def test_requests_are_bounded_in_size_and_time(lab: Lab) -> None:
    """A 1 MiB body is a 413 without being read; a body that never arrives, or trickles as a
    never-ending chunked stream, is a 408 after BODY_TIMEOUT_S; headers that never end are
    closed after HEADER_TIMEOUT_S. Meanwhile 200 stalled connections do not stop the status
    from answering, and the daemon's log stays JSON."""
    daemon, sock = _start(lab)
    code, answer = exchange(sock, "POST", EXTEND, b"x" * (1 << 20))
    assert code == 413, answer

    stalled = []
    for _ in range(200):
        s = connect(sock, timeout=BODY_TIMEOUT_S + 30)
        s.sendall(b"POST /api/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        stalled.append(s)
    chunked = connect(sock, timeout=BODY_TIMEOUT_S + 30)
    chunked.sendall(b"POST /api/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    trickle(chunked, [b"1\r\n{\r\n"] * 200, every_s=0.5)
    headers = connect(sock, timeout=HEADER_TIMEOUT_S + 30)
    trickle(headers, [b"GET /api/status HTTP/1.1\r\n", *[b"X-A: b\r\n"] * 200], every_s=0.5)

    assert api(sock, "GET", "/api/status")[0] == 200  # served beside the stalled ones
    assert status_of(read_all(chunked))[0] == 408
    for s in stalled:
        code, answer = status_of(read_all(s))
        assert code == 408 and "not received" in answer["error"], answer
        s.close()
    assert read_all(headers) == b""  # closed, nothing answered
    for s in (chunked, headers):
        s.close()
    assert daemon.stop() == 0, daemon.text()[-3000:]
    _all_json(daemon)


def test_clients_that_go_away_leave_no_traceback(lab: Lab) -> None:
    """Clients that disconnect mid-body, mid-headers and before reading the answer: the daemon
    writes only JSON lines and keeps serving."""
    daemon, sock = _start(lab)
    for _ in range(50):
        with connect(sock) as s:
            s.sendall(f"POST {EXTEND} HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{{".encode())
        with connect(sock) as s:
            s.sendall(b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        with connect(sock) as s:
            s.sendall(b"GET /api/sta")
    assert api(sock, "GET", "/api/status")[0] == 200
    assert daemon.stop() == 0
    _all_json(daemon)


def test_token_file_checks_and_two_authorization_headers(lab: Lab) -> None:
    """A FIFO as the token file is refused at once by --check and at start-up (exit 78
    naming the key and the file); a group-readable one starts with a warning naming file
    and mode; two Authorization headers are a 400 even when one is right."""
    fifo = lab.root / "token.fifo"
    os.mkfifo(fifo)
    port = free_port()
    lab.write(
        [dry_target(lab, "alpha")],
        daemon={"http_listen": f"127.0.0.1:{port}", "http_token_file": str(fifo)},
    )
    for args in (["--check"], []):
        refused = run_autoloopd(["--config", str(lab.config), *args], timeout=30)
        assert refused.returncode == EXIT_CONFIG, refused
        assert "daemon.http_token_file" in refused.stderr and "regular file" in refused.stderr

    token = lab.root / "token"
    token.write_text("s3cret-token\n")
    token.chmod(0o644)
    daemon, _ = _start(lab, http_listen=f"127.0.0.1:{port}", http_token_file=str(token))
    warning = daemon.wait_event("token_file_readable")[0]
    assert warning["path"] == str(token) and "0644" in warning["problem"]
    good = "Authorization: Bearer s3cret-token"
    assert exchange(port, "GET", "/api/budget", headers=(good,))[0] == 200
    for pair in ((good, "Authorization: Bearer wrong"), ("Authorization: Bearer wrong", good)):
        code, answer = exchange(port, "GET", "/api/budget", headers=pair)
        assert code == 400 and "Authorization" in answer["error"], answer
    assert daemon.stop() == 0
    assert stat.S_IMODE(token.stat().st_mode) == 0o644  # warned about, never changed


def test_reload_requests_during_a_sighup_storm_are_all_answered(lab: Lab) -> None:
    """60 `POST /api/reload` while SIGHUPs keep arriving (each reload of 400 targets takes a
    while): each is answered (it joins the reload queued behind the running one), and the
    daemon exits 0 afterwards."""
    daemon, sock = _start(lab, extra=[dry_target(lab, f"t{i:03d}") for i in range(400)])
    answers: list[int] = []

    def reload_once() -> None:
        answers.append(api(sock, "POST", "/api/reload")[0])

    stop = threading.Event()

    def storm() -> None:
        while not stop.is_set():
            os.kill(daemon.pid, signal.SIGHUP)
            stop.wait(0.002)

    stormer = threading.Thread(target=storm, daemon=True)
    stormer.start()
    daemon.wait_event("config_reloaded", count=20, timeout=60)  # the storm is under way
    try:
        clients = [threading.Thread(target=reload_once) for _ in range(60)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(timeout=60)
    finally:
        stop.set()
        stormer.join()
    assert answers == [200] * 60, answers
    assert daemon.stop() == 0, daemon.text()[-3000:]
    _all_json(daemon)
