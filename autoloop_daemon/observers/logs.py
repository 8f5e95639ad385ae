"""structlog setup: JSON lines for journald, a readable console renderer for terminals.

Every event carries ``timestamp`` (ISO 8601, UTC), ``level``, ``event`` and whatever the
current task bound with ``structlog.contextvars.bound_contextvars`` (``target=``,
``iteration=``). Each event is one line, flushed at once, so journald sees it immediately.
When the output stream is connected to the journal (``JOURNAL_STREAM`` names its device and
inode), each JSON line starts with its syslog priority (``<3>`` error ... ``<7>`` debug), which
journald strips and stores (``SyslogLevelPrefix=yes``), so ``journalctl -p warning`` works.
"""

from __future__ import annotations

import datetime as _dt
import logging as _stdlib_logging
import os
import sys
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "configure_logging", "get_logger", "on_journal"]

# syslog priorities of structlog's level names (sd-daemon(3): <3> error ... <7> debug).
SYSLOG_PRIORITY: dict[str, int] = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "info": 6,
    "debug": 7,
}

LOG_FORMATS: tuple[str, ...] = ("auto", "json", "console")
"""Accepted values of ``[daemon] log_format``."""

LOG_LEVELS: dict[str, int] = {
    "debug": 10,
    "info": 20,
    "warning": 30,
    "warn": 30,
    "error": 40,
    "critical": 50,
}
"""Accepted values of ``[daemon] log_level`` (case-insensitive) and their numeric levels."""


def configure_logging(
    log_format: str = "auto",
    log_level: str = "info",
    stream: TextIO | None = None,
    cache: bool = True,
) -> None:
    """Configure structlog for the whole process.

    ``log_format``: ``json`` (one object per line), ``console`` (colors only on a TTY), or
    ``auto``: console on a TTY, JSON otherwise (journald, pipes, files). ``stream`` defaults
    to ``sys.stdout`` (looked up at each write, so redirections are honoured). With
    ``cache`` the loggers are frozen on first use (faster; tests pass ``cache=False`` so that
    ``structlog.testing.capture_logs`` sees them, and so a later call can take effect).

    Raises ValueError for an unknown format or level.
    """
    fmt = log_format.lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    level = LOG_LEVELS.get(log_level.lower())
    if level is None:
        names = ", ".join(name for name in LOG_LEVELS if name != "warn")
        raise ValueError(f"log_level must be one of {names}, not {log_level!r}")

    processors = _processors(fmt, stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        context_class=dict,
        # PrintLogger prints one line per event with flush=True; with file=None it writes to
        # whatever sys.stdout is at that moment.
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=cache,
    )
    # Libraries log through the standard library (asyncio's "Exception in callback ..."
    # among them): send those records through structlog too, so journald gets one JSON line
    # per event instead of a raw multi-line traceback.
    root = _stdlib_logging.getLogger()
    root.handlers = [_ToStructlog()]
    root.setLevel(level)
    sys.unraisablehook = _unraisable_to_structlog  # "Exception ignored in ...", e.g. __del__


def _processors(fmt: str, stream: TextIO | None) -> list[Processor]:
    """The processor chain: JSON (with journald priorities on the journal's stream) unless the
    format is console, or auto on a terminal."""
    is_tty = _isatty(sys.stdout if stream is None else stream)
    use_json = fmt == "json" or (fmt == "auto" and not is_tty)

    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
    ]
    if use_json:
        render = structlog.processors.JSONRenderer(default=_json_default)
        processors += [
            structlog.processors.dict_tracebacks,
            _PriorityPrefix(render)
            if on_journal(sys.stdout if stream is None else stream)
            else render,
        ]
    else:
        # ConsoleRenderer formats exc_info itself, after the line.
        processors.append(structlog.dev.ConsoleRenderer(colors=is_tty))
    return processors


def on_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when `stream` is the journal's: JOURNAL_STREAM is `<device>:<inode>` of it."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


class _PriorityPrefix:
    """Wrap a renderer: `<N>` (the syslog priority of the event's level) before the line."""

    def __init__(self, render: Processor) -> None:
        self._render = render

    def __call__(self, logger: Any, method: str, event_dict: Any) -> str:
        priority = SYSLOG_PRIORITY.get(str(event_dict.get("level", method)), 6)
        line = self._render(logger, method, event_dict)
        text = line.decode() if isinstance(line, bytes) else str(line)
        return f"<{priority}>{text}"


def _unraisable_to_structlog(unraisable: Any) -> None:
    """Log an exception Python could not raise (a finaliser's) as one structlog event."""
    exc = unraisable.exc_value
    structlog.get_logger().error(
        unraisable.err_msg or "Exception ignored",
        logger="python.unraisable",
        object=repr(unraisable.object),
        exc_info=(type(exc), exc, unraisable.exc_traceback) if exc is not None else None,
    )


class _ToStructlog(_stdlib_logging.Handler):
    """A standard-library logging handler that re-emits each record as a structlog event."""

    def emit(self, record: _stdlib_logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        structlog.get_logger().log(
            record.levelno,
            message,
            logger=record.name,
            exc_info=record.exc_info if record.exc_info else None,
        )


def get_logger(name: str | None = None) -> Any:
    """Return a lazy structlog logger that follows the configuration of the moment.

    ``name`` (usually ``__name__``) is accepted for familiarity and passed to the logger
    factory, which ignores it: events are identified by their name and bound ``target=``,
    and adding nothing keeps ``capture_logs`` assertions exact.
    """
    if name is None:
        return structlog.get_logger()
    return structlog.get_logger(name)


def _isatty(stream: TextIO) -> bool:
    """``stream.isatty()``, False for streams that lack it or are closed."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _json_default(obj: object) -> Any:
    """Serialize what ``json`` cannot: paths and datetimes as text, anything else as repr."""
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, _dt.datetime | _dt.date | _dt.time):
        return obj.isoformat()
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    structlog_hook = getattr(obj, "__structlog__", None)
    if callable(structlog_hook):
        return structlog_hook()
    return repr(obj)
