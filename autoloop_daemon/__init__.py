"""autoloopd: keeps AI improvement loops running unattended, crash-safe and within budget."""

import sys

# structlog's dev module imports rich (and with it pygments) whenever rich is installed,
# only for its optional rich tracebacks: ~4 MB of memory in every daemon, which logs JSON
# lines or plain text. A None entry in sys.modules makes that `import rich` fail, so
# structlog falls back to plain tracebacks; the terminal's live view imports rich itself
# (observers/live_view.py), after this.
if "structlog" not in sys.modules and "rich" not in sys.modules:
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]

__version__ = "0.1.0"
