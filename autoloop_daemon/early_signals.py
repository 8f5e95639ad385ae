"""Signals that arrive while the daemon is still importing and starting up.

Python runs SIGHUP's default action (the process ends, silently) until a handler exists,
and SIGTERM's too; SIGINT raises KeyboardInterrupt in whatever import is running. The
daemon forms call `hold` first thing, before the runtime is imported: from then on these
signals are only recorded, and the signal task (engine/signals.py) applies them once it
runs: a SIGHUP as a reload after READY, a SIGTERM/SIGINT as an ordinary shutdown request
(exit 0, every checkpoint written). A second SIGTERM or SIGINT before then acts at once, as
it would have without `hold` (a start-up stuck on a database or a lock can still be ended).
Handlers, unlike a blocked mask, are reset by exec, so no child inherits them.
"""

from __future__ import annotations

import signal
from types import FrameType

HELD = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
_pending: list[int] = []


def _default(signum: int) -> signal.Handlers | object:
    return signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL


def _record(signum: int, _frame: FrameType | None) -> None:
    if signum != signal.SIGHUP and signum in _pending:
        signal.signal(signum, _default(signum))  # type: ignore[arg-type]
        signal.raise_signal(signum)
    _pending.append(signum)


def hold() -> None:
    """From now on SIGHUP, SIGTERM and SIGINT are recorded until `take` collects them."""
    for signum in HELD:
        signal.signal(signum, _record)


def take() -> list[int]:
    """The signals recorded since `hold` (oldest first), forgotten once returned."""
    taken = list(_pending)
    del _pending[: len(taken)]
    return taken


def release() -> None:
    """Back to the default handlers (a form that never runs the signal task: `--check`), and
    whatever was recorded is delivered again now."""
    for signum in HELD:
        signal.signal(signum, _default(signum))  # type: ignore[arg-type]
    for recorded in take():
        signal.raise_signal(recorded)
