#!/usr/bin/env python3
"""A fake alert command: appends its stdin (one alert's JSON) as one line to the file argv[1].

`--fail-first N` makes the first N calls exit 1 (counted in `<file>.calls`), to exercise
retries; `--delay S` makes each call take S seconds before it appends (a slow delivery).
One `os.write` on an O_APPEND descriptor per alert, so concurrent calls never
interleave. Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    """Append stdin to argv[1]; exit 1 for the first --fail-first calls."""
    out = sys.argv[1]
    flags = dict(zip(sys.argv[2::2], sys.argv[3::2], strict=False))
    fail_first = int(flags.get("--fail-first", 0))
    fd = os.open(out + ".calls", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, b".")
    os.close(fd)
    with open(out + ".calls", "rb") as f:
        calls = len(f.read())
    if calls <= fail_first:
        print(f"alert_sink: failing call {calls} on purpose", file=sys.stderr)
        return 1
    alert = json.loads(sys.stdin.buffer.read())
    time.sleep(float(flags.get("--delay", 0)))
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (json.dumps(alert) + "\n").encode())
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
