"""autoloopd: keeps AI improvement loops running unattended, crash-safe and within budget."""

import sys


def _import_structlog_without(unused: tuple[str, ...]) -> None:
    """Import structlog while the packages `unused` cannot be imported.

    structlog imports optional packages whenever they are installed: rich (and with it
    pygments) for its console renderer's tracebacks, greenlet (a C++ extension, and
    libstdc++) for its deprecated threadlocal module. The daemon logs JSON lines or plain
    text from asyncio tasks and threads: neither serves it, and they cost ~4.5 MB of memory
    (issue 24). A None entry in sys.modules makes such an import fail, so structlog falls
    back to plain tracebacks and threading.local; the entries are removed afterwards, and
    the terminal's live view imports rich itself (observers/live_view.py).
    """
    if "structlog" in sys.modules:
        return
    hidden = [name for name in unused if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    finally:
        for name in hidden:
            del sys.modules[name]


_import_structlog_without(("rich", "greenlet"))

__version__ = "0.1.0"
