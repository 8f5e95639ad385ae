"""The open files a fleet needs, checked against RLIMIT_NOFILE before anything is opened.

Each target holds its state root's lock file open for the daemon's life (one descriptor;
none else while it cools down), and each running iteration a few more (its two pipes, four
ends while it is being spawned, the run log, a pidfd, the scorer's). Start-up raises the
soft limit to what the fleet needs when the hard limit allows it, and otherwise refuses to
start, naming the number to set: running out later fails checkpoints with "Too many open
files" at the worst moment, a shutdown.
"""

from __future__ import annotations

import resource

from autoloop_daemon.exceptions import ConfigError

__all__ = ["PER_RUN", "SPARE", "descriptors_needed", "fit_open_file_limit", "limit_problem"]

PER_RUN = 8  # pipes (4 ends while spawning), run log, pidfd, /dev/null, the scorer's run
SPARE = 256  # sockets, the journal, the control API's clients, a small commit batch


def descriptors_needed(targets: int, concurrent: int) -> int:
    """Descriptors for `targets` (a lock each, and the state directory's) with `concurrent`
    iterations running at once, plus a spare for the daemon's own."""
    return targets + 1 + PER_RUN * max(concurrent, 1) + SPARE


def limit_problem(targets: int, concurrent: int) -> str | None:
    """None when the soft limit holds the fleet or the hard limit lets it be raised; else
    the problem, naming the number needed and where to set it."""
    needed = descriptors_needed(targets, concurrent)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= needed:
        return None
    return (
        f"{targets} targets with max_concurrent_iterations = {concurrent} need {needed} open "
        f"files (one lock per target, {PER_RUN} per running iteration, {SPARE} spare), but "
        f"the hard limit (RLIMIT_NOFILE) is {hard}: set LimitNOFILE={needed} in the "
        f"systemd unit, or run `ulimit -n {needed}` first"
    )


def fit_open_file_limit(targets: int, concurrent: int) -> int:
    """Raise the soft RLIMIT_NOFILE to what the fleet needs; returns the soft limit now.

    Raises ConfigError (naming the number needed) when the hard limit is below it. A soft
    limit already above is left alone (never lowered).
    """
    problem = limit_problem(targets, concurrent)
    if problem is not None:
        raise ConfigError(problem)
    needed = descriptors_needed(targets, concurrent)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        soft = needed
    return soft
