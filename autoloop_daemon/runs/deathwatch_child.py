"""The death watch's own process: run as a script, standard library only (see deathwatch.py).

It reads lines from stdin, a pipe whose only writer is the daemon: `M <marker>` (a run is
about to start), `L <marker>\t<path>` (its run log), `G <pgid> <marker>` (its process
group), `-G <pgid>` and `-M <marker>` (it ended). End of file means the daemon is gone,
however it died: every registered group gets SIGKILL, then every process still carrying a
registered AUTOLOOPD_RUN marker (one that left its group with setsid()), in a few rounds;
then the run log of each run still registered has its modification time set to now (the
moment its run was killed, which recovery charges the run up to: a silent orchestrator's
log would otherwise say when it started), and it exits. It ignores SIGINT, SIGTERM and
SIGHUP: a Ctrl+C or a stop signal is the daemon's to handle, and its stdin is what ends it.
"""

import contextlib
import os
import signal
import sys

_MARKER_ENV = b"AUTOLOOPD_RUN="
_ROUNDS = 4


def _marker_of(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            env = handle.read()
    except OSError:
        return None
    for item in env.split(b"\0"):
        if item.startswith(_MARKER_ENV):
            return item[len(_MARKER_ENV) :]
    return None


def _kill_all(groups: set[int], markers: set[bytes]) -> None:
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
    me = os.getpid()
    for _ in range(_ROUNDS):
        found = 0
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            marker = _marker_of(int(name))
            if marker is not None and marker in markers:
                found += 1
                with contextlib.suppress(OSError):
                    os.kill(int(name), signal.SIGKILL)
        if not found:
            return


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    groups: set[int] = set()
    markers: dict[bytes, int] = {}
    logs: dict[bytes, bytes] = {}
    for line in sys.stdin.buffer:
        verb, _, rest = line.rstrip(b"\n").partition(b" ")
        try:
            if verb == b"M":
                markers[rest] = markers.get(rest, 0) + 1
            elif verb == b"-M" and markers.get(rest, 0) > 1:
                markers[rest] -= 1
            elif verb == b"-M":
                markers.pop(rest, None)
                logs.pop(rest, None)
            elif verb == b"L":
                marker, _, path = rest.partition(b"\t")
                logs[marker] = path
            elif verb == b"G":
                groups.add(int(rest.split(b" ", 1)[0]))
            elif verb == b"-G":
                groups.discard(int(rest))
        except ValueError:
            continue
    _kill_all(groups, set(markers))
    for marker, path in logs.items():
        if marker in markers:
            with contextlib.suppress(OSError):
                os.utime(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
