#!/usr/bin/env python3
"""A fake alert command: appends its stdin (one alert's JSON) as one line to the file argv[1].

`--fail-first N` makes the first N calls exit 1 (counted in `<file>.calls`), to exercise
retries. One `os.write` on an O_APPEND descriptor per alert, so concurrent calls never
interleave. Standard library only.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    """Append stdin to argv[1]; exit 1 for the first --fail-first calls."""
    out = sys.argv[1]
    fail_first = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == "--fail-first" else 0
    fd = os.open(out + ".calls", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, b".")
    os.close(fd)
    with open(out + ".calls", "rb") as f:
        calls = len(f.read())
    if calls <= fail_first:
        print(f"alert_sink: failing call {calls} on purpose", file=sys.stderr)
        return 1
    alert = json.loads(sys.stdin.buffer.read())
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (json.dumps(alert) + "\n").encode())
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
