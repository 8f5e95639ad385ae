"""hypercorn's HTTP/2 stack is executed on first use (control/lazy_http2.py): a daemon's
imports leave it unexecuted, and a client that speaks HTTP/2 on the control socket is
still served."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from tests.helpers.daemon import Lab, dry_target

# What a daemon imports to serve its socket; then its HTTP/2 modules: made, and executed.
PROBE = """
import importlib.util, json, sys
import autoloop_daemon.cli.serve, autoloop_daemon.control.server
from hypercorn.asyncio.run import worker_serve
made = {n: m for n, m in sys.modules.items() if n.partition(".")[0] in {"h2", "hpack"}}
executed = [n for n, m in made.items() if not isinstance(m, importlib.util._LazyModule)]
print(json.dumps({"made": sorted(made), "executed": sorted(executed)}))
"""


def test_the_daemons_imports_leave_the_http2_connection_code_unexecuted() -> None:
    """The daemon's own imports (its CLI's serve path, the control server, hypercorn's
    server) make `h2.connection` but do not run it, so neither do `h2.stream` and `hpack`,
    which it imports."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    modules = json.loads(done.stdout)
    assert "h2.connection" in modules["made"], modules
    assert {"h2.connection", "h2.stream", "hpack"}.isdisjoint(modules["executed"]), modules


def http2_get(sock: Path, path: str) -> tuple[int, bytes]:
    """`GET path` over the unix socket `sock` in HTTP/2 with prior knowledge (RFC 9113
    3.3): (status, body)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")]
    conn.send_headers(1, headers, end_stream=True)
    status, body = 0, b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(sock))
        s.sendall(conn.data_to_send())
        ended = False
        while not ended:
            data = s.recv(65536)
            if not data:
                pytest.fail(f"the daemon closed the HTTP/2 connection (status {status})")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            s.sendall(conn.data_to_send())
    return status, body


def test_an_http2_client_is_served_on_the_control_socket(tmp_path: Path) -> None:
    """HTTP/2 with prior knowledge on the daemon's socket: the deferred modules run when the
    connection needs them and the request is answered like an HTTP/1.1 one."""
    lab = Lab(tmp_path)
    lab.write([dry_target(lab, "alpha")])
    daemon = lab.start()
    try:
        daemon.wait_event("control_socket_listening")
        status, body = http2_get(lab.state_dir / "autoloopd.sock", "/api/budget")
        assert status == 200, body
        assert "spent_usd" in json.loads(body)
    finally:
        assert daemon.stop() == 0
