"""autoloopd: keeps AI improvement loops running unattended, crash-safe and within budget."""

import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType
from typing import Any

# structlog imports optional packages whenever they are installed: rich (and with it
# pygments) for its console renderer's tracebacks, greenlet (a C++ extension, and
# libstdc++) for its deprecated threadlocal module. The daemon logs JSON lines or plain text
# from asyncio tasks and threads: neither serves it, and they cost ~4.5 MB of memory (issue
# 24). While structlog's own import runs, a None entry in sys.modules for each makes that
# import fail, so structlog falls back to plain tracebacks and threading.local; the entries
# are removed afterwards, and the terminal's live view imports rich itself
# (observers/live_view.py). The finder below does it when structlog is first imported,
# not here: `autoloopd status` never imports structlog at all (tests/test_status_quick.py).
_UNUSED_BY_STRUCTLOG = ("rich", "greenlet")


class _ImportWithout:
    """A loader running another's `exec_module` while `_UNUSED_BY_STRUCTLOG` cannot be
    imported; everything else is the other loader's."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        """The wrapped loader's module."""
        created: ModuleType | None = self._loader.create_module(spec)
        return created

    def exec_module(self, module: ModuleType) -> None:
        """The wrapped loader's `exec_module`, the unused packages hidden meanwhile."""
        hidden = [name for name in _UNUSED_BY_STRUCTLOG if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None  # type: ignore[assignment]
        try:
            self._loader.exec_module(module)
        finally:
            for name in hidden:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]


class _StructlogFinder:
    """Finds structlog once, as the path finder does, with its loader wrapped."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        """structlog's spec with an `_ImportWithout` loader; None for any other module."""
        if fullname != "structlog":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one import: the first
        spec = PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _ImportWithout(spec.loader)  # type: ignore[assignment]
        return spec


if "structlog" not in sys.modules:
    sys.meta_path.insert(0, _StructlogFinder())

__version__ = "0.1.0"
