"""A local webhook receiver: http.server on 127.0.0.1 in a thread, recording each POST."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """What the receiver got: the JSON bodies it accepted, and how many requests came."""

    def __init__(self, fail_first: int) -> None:
        """Answer the first `fail_first` requests with 503 (to exercise retries)."""
        self.fail_first = fail_first
        self.requests = 0
        self.accepted: list[dict[str, Any]] = []
        self.content_types: list[str] = []
        self.lock = threading.Lock()
        self.url = ""

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The accepted alerts of one kind (`event` field)."""
        with self.lock:
            return [a for a in self.accepted if a.get("event") == kind]


@contextmanager
def webhook_receiver(fail_first: int = 0) -> Iterator[Receiver]:
    """A running receiver whose `url` accepts POSTs until the block ends."""
    receiver = Receiver(fail_first)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output clean

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.requests += 1
                failing = receiver.requests <= receiver.fail_first
                if not failing:
                    receiver.accepted.append(json.loads(body))
                    receiver.content_types.append(self.headers.get("Content-Type", ""))
            self.send_response(503 if failing else 204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll interval: shutdown() waits for the loop's next poll (0.5 s by default).
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
