"""Whether a text is shaped as an IANA time zone name: the one check `status` makes of its
terminal's zone before it asks the daemon, and the daemon of the zone it is asked for.

Its own module so that `status` asking a daemon imports it without the text rendering
(status_text.py).
"""

from __future__ import annotations

import re

__all__ = ["MAX_ZONE_KEY", "is_zone_key"]

_ZONE_KEY = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")
MAX_ZONE_KEY = 64


def is_zone_key(text: str) -> bool:
    """True when `text` is shaped as an IANA zone name (`Europe/Berlin`): at most
    MAX_ZONE_KEY characters, no `..`, no absolute path, no POSIX rule (`NPT-5:45`)."""
    return len(text) <= MAX_ZONE_KEY and _ZONE_KEY.fullmatch(text) is not None
