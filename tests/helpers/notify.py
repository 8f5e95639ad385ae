"""The one stand-in for systemd's $NOTIFY_SOCKET: a bound AF_UNIX datagram socket (a path, or
a name in the abstract namespace) whose datagrams a thread records with their arrival times."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.wait import WaitTimeout

SUN_PATH_MAX = 100  # sun_path holds 108 bytes; leave room


@dataclass(frozen=True)
class Notification:
    """One datagram the daemon sent."""

    at: float  # time.monotonic() on arrival
    wall: float  # time.time() on arrival
    data: bytes

    @property
    def lines(self) -> list[str]:
        """Its `KEY=value` lines, exactly as sent (a trailing newline shows as a last '')."""
        return self.data.decode("utf-8", "replace").split("\n")

    def get(self, key: str) -> str | None:
        """The value of `KEY=` (the last one when sent twice), None when absent."""
        found = None
        for line in self.lines:
            name, sep, value = line.partition("=")
            if sep and name == key:
                found = value
        return found


class NotifyListener:
    """Use as a context manager: `with NotifyListener(dir) as notify:` binds `dir/notify.sock`
    (or a socket in a short temp dir when that path is too long for AF_UNIX; with no `dir`, a
    socket in the abstract namespace) and records every datagram until the block ends. Give
    the daemon `notify.env`."""

    def __init__(self, directory: Path | None) -> None:
        """Remember where to bind; nothing happens until the block is entered."""
        self.address = "" if directory is None else str(directory / "notify.sock")
        self._messages: list[Notification] = []
        self._taken = 0
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._closed = False

    def __enter__(self) -> NotifyListener:
        if not self.address:
            self.address = f"@autoloopd-test-{os.getpid()}-{uuid.uuid4().hex}"
        elif len(self.address.encode()) > SUN_PATH_MAX:
            self._tmp = tempfile.TemporaryDirectory(prefix="al-")
            self.address = str(Path(self._tmp.name) / "n.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        if self.address.startswith("@"):
            sock.bind("\0" + self.address[1:])
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)
            sock.bind(self.address)
        sock.settimeout(0.1)
        self._sock = sock
        self._thread = threading.Thread(target=self._receive, name="notify", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
        if not self.address.startswith("@"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)
        if self._tmp is not None:
            self._tmp.cleanup()

    def _receive(self) -> None:
        assert self._sock is not None
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            message = Notification(time.monotonic(), time.time(), data)
            with self._cond:
                self._messages.append(message)
                self._cond.notify_all()

    @property
    def env(self) -> dict[str, str]:
        """The variable to give the daemon: the socket's path, or `@name` when abstract."""
        return {"NOTIFY_SOCKET": self.address}

    def messages(self) -> list[Notification]:
        """Every datagram received so far, in order."""
        with self._cond:
            return list(self._messages)

    def lines(self) -> list[list[str]]:
        """The lines of every datagram received so far, in order."""
        return [m.lines for m in self.messages()]

    def wait_for(
        self, predicate: Callable[[list[Notification]], Any], timeout: float = 20.0, what: str = ""
    ) -> Any:
        """Wait until `predicate(every message so far)` is truthy and return that value
        (woken by each datagram, not polling); `WaitTimeout` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(list(self._messages))
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(f"timed out after {timeout} s waiting for {what}")
                self._cond.wait(remaining)

    def receive(self, timeout: float = 5.0) -> str:
        """The next datagram not yet taken by `receive`, as (strict UTF-8) text."""
        taken = self._taken
        message: Notification = self.wait_for(
            lambda ms: ms[taken] if len(ms) > taken else None,
            timeout=timeout,
            what=f"datagram {taken + 1}",
        )
        self._taken += 1
        return message.data.decode("utf-8")

    def wait_ready(self, timeout: float = 20.0) -> Notification:
        """The first READY=1 datagram (received so far or within `timeout` seconds)."""
        ready: Notification = self.wait_for(
            lambda ms: next((m for m in ms if m.get("READY") == "1"), None),
            timeout=timeout,
            what="READY=1",
        )
        return ready
