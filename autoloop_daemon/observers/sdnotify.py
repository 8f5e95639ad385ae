"""sd_notify(3) without libsystemd: readiness, status, stopping, reloading and the watchdog.

systemd's notification protocol is one ``AF_UNIX`` ``SOCK_DGRAM`` datagram per message, sent
to the socket named by ``$NOTIFY_SOCKET``: a filesystem path, or ``@name`` for the abstract
namespace (the ``@`` becomes a NUL byte). A message is newline-separated ``KEY=value`` fields.

Nothing here may take the daemon down: a missing or full socket is logged and ignored, and
when ``$NOTIFY_SOCKET`` is unset (not started by systemd) every call is a cheap no-op.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import anyio
import structlog

__all__ = ["NOTIFY_ENV_VARS", "Notifier"]

NOTIFY_ENV_VARS: tuple[str, ...] = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
"""The variables systemd sets for the main process; strip them from children's environment."""

_log = structlog.get_logger("autoloopd.sdnotify")


class Notifier:
    """sd_notify without libsystemd: one datagram per message to $NOTIFY_SOCKET.

    The socket is a path, or ``@name`` for the abstract namespace. The constructor only reads
    the environment; the socket is opened (non-blocking) on the first message.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (default: os.environ)."""
        env = os.environ if environ is None else environ
        self._address = _parse_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._sock: socket.socket | None = None
        self._failing = False  # log a failure once, not on every watchdog tick

    @property
    def enabled(self) -> bool:
        """True when ``$NOTIFY_SOCKET`` names a usable socket (absolute path or ``@name``)."""
        return self._address is not None

    def notify(self, *fields: str) -> None:
        """Send ``fields`` joined by newlines as one datagram; never raises.

        A no-op when disabled or given no fields. ``OSError`` (no listener, queue full, ...)
        is logged once per run of failures and otherwise ignored.
        """
        if self._address is None or not fields:
            return
        message = "\n".join(fields).encode("utf-8")
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                _log.warning(
                    "sd_notify_failed",
                    socket=self._address.replace("\0", "@", 1),
                    error=str(exc),
                    message=fields[0],
                )
        else:
            if self._failing:
                self._failing = False
                _log.info("sd_notify_recovered")

    def ready(self, status: str | None = None) -> None:
        """Send ``READY=1``, with a ``STATUS=`` line when ``status`` is given."""
        if status is None:
            self.notify("READY=1")
        else:
            self.notify("READY=1", _status_field(status))

    def status(self, text: str) -> None:
        """Send ``STATUS=<text>`` with newlines replaced, so it stays one line."""
        self.notify(_status_field(text))

    def stopping(self) -> None:
        """Send ``STOPPING=1``: shutdown has begun."""
        self.notify("STOPPING=1")

    def reloading(self) -> None:
        """Send ``RELOADING=1`` with ``MONOTONIC_USEC=``; follow it with :meth:`ready`."""
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def watchdog_interval_s(self) -> float | None:
        """Half of ``WATCHDOG_USEC`` in seconds, or None when no watchdog is asked of us.

        None also when ``WATCHDOG_PID`` is set to a pid other than ours (the variables were
        inherited by a child) or the values do not parse.
        """
        if not self._watchdog_usec:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        return usec / 2 / 1_000_000

    async def watchdog_loop(self) -> None:
        """Send ``WATCHDOG=1`` now and then every :meth:`watchdog_interval_s`, forever.

        Runs on the event loop on purpose: a blocked loop stops the pings and systemd
        restarts the service. Returns at once when no watchdog is configured.
        """
        interval_s = self.watchdog_interval_s()
        if interval_s is None or not self.enabled:
            return
        while True:
            self.notify("WATCHDOG=1")
            await anyio.sleep(interval_s)

    def close(self) -> None:
        """Close the socket if open; a later message opens it again."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _parse_address(value: str) -> str | None:
    """Turn ``$NOTIFY_SOCKET`` into a socket address, or None if unset or unsupported."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # unset, relative, or a transport we do not speak (e.g. vsock:)


def _status_field(text: str) -> str:
    """Build a one-line ``STATUS=`` field."""
    one_line = " ".join(text.splitlines())
    return f"STATUS={one_line}"
