"""`PtyRun`: `autoloopd` on a real pseudo-terminal (pty), with what it draws collected, for the
tests of the terminal's live view and Ctrl+C notices."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
import threading
from pathlib import Path
from types import TracebackType

from tests.helpers.process import AUTOLOOPD, child_env
from tests.helpers.wait import wait_for

ANSI_FREE_COLUMNS = 200
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class PtyRun:
    """`autoloopd ARGS` with stdin, stdout and stderr on a new pty; collects what it draws."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        """Start it on a 50 x 200 terminal."""
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, ANSI_FREE_COLUMNS, 0, 0))
        env = child_env({"COLUMNS": str(ANSI_FREE_COLUMNS), "LINES": "50", "TERM": "xterm"})
        self.proc = subprocess.Popen(
            [*AUTOLOOPD, *args], stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
            close_fds=True,
        )  # fmt: skip
        os.close(slave)
        self._master = master
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO once the child closed its side
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    def text(self) -> str:
        """Everything drawn so far, without the terminal's escape sequences."""
        return ANSI.sub("", b"".join(self._chunks).decode("utf-8", "replace"))

    def wait_text(self, needle: str, timeout: float = 30.0) -> None:
        """Wait until `needle` was drawn."""
        wait_for(lambda: needle in self.text(), timeout=timeout, what=repr(needle))

    def close(self, timeout: float = 60.0) -> int:
        """Wait for the exit code (SIGKILL after `timeout`) and close the pty."""
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._reader.join(timeout=10)
            os.close(self._master)

    def __enter__(self) -> PtyRun:
        """The run; a test that fails inside the block kills it and closes the pty."""
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is not None:
            self.proc.kill()
            self.close()
