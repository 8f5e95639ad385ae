"""hypercorn's HTTP/2 stack, executed on first use instead of at import.

hypercorn imports `h2` (with `hpack`, `hyperframe` and `priority`) as it is imported, for
the connections that speak HTTP/2: prior knowledge, or an HTTP/1.1 request asking for an
`Upgrade: h2c`. The control API's clients (`autoloopd ctl` and `status`, curl, Prometheus,
the dashboard's browser on a plain socket) speak HTTP/1.1, so every daemon held ~0.9 MB of
code it never ran (peak RSS of the modules a running daemon imports; issue 24's memory
figure has ~10 MB for 1,000 targets above that).

`defer_http2()` puts a finder first on `sys.meta_path` that hands those four packages'
modules to importlib's `LazyLoader`: a module is made when it is imported and executed at
its first attribute access. hypercorn touches some of them as it loads (`h2.events` and
what it imports); the rest, `h2.connection` with `hpack` and `h2.stream` above all, run
only when a connection does speak HTTP/2. Only the event loop's thread runs hypercorn, so
the first access cannot race (`LazyLoader` takes no lock before Python 3.12).

The package imports this module, so `status` and `ctl` do too: it imports nothing
itself until one of those packages is imported (`importlib.abc` alone took ~6 ms of a
client's start).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from types import ModuleType

HTTP2_PACKAGES = frozenset({"h2", "hpack", "hyperframe", "priority"})


class _DeferredFinder:
    """A `sys.meta_path` finder: HTTP2_PACKAGES' modules, as the finders after it find
    them, loaded lazily."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        """The module's spec from the next finder that knows it, its loader made lazy
        (None for any other module; the spec as it is for a loader that cannot be lazy)."""
        if fullname.partition(".")[0] not in HTTP2_PACKAGES:
            return None
        from importlib.util import LazyLoader  # here: a client never gets this far

        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec: ModuleSpec | None = finder.find_spec(fullname, path, target)
            if spec is None:
                continue
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = LazyLoader(spec.loader)
            return spec
        return None


def defer_http2() -> None:
    """Load HTTP2_PACKAGES lazily from now on (once per process; nothing changes for a
    package that is already imported)."""
    if any(isinstance(finder, _DeferredFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _DeferredFinder())
