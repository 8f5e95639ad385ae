"""blockbuster set up for this project: inside an in-process anyio test, a blocking call
(file or /proc I/O, os.stat, time.sleep, a blocking socket, ...) made on the event loop with
autoloopd's code on the stack raises `BlockingError` and fails the test. Calls made in worker
threads (`anyio.to_thread.run_sync`) are not on the loop and pass.

Only autoloop_daemon/ is scanned, as anyio, starlette and fastapi scan their own package: a
test's own file reads on the loop (checking what the daemon wrote) say nothing about the
daemon. A test that calls one of the daemon's sync functions from the loop is caught, and
calls it with `anyio.to_thread.run_sync` as the daemon itself must.

The allow-list holds the daemon's known blocking calls on the loop, each named by file and
function, so that nothing else can hide behind it. Each is a finding for autoloop_daemon/
(reported, not fixed here); remove its line once the daemon moves the call off the loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from blockbuster import BlockBuster, blockbuster_ctx

# Code whose blocking calls count.
SCANNED = ["autoloop_daemon"]

# (blockbuster function, file, function allowed to call it on the loop): known findings.
KNOWN_BLOCKING: tuple[tuple[str, str, str], ...] = ()  # none left: every finding was fixed


@contextmanager
def no_blocking() -> Iterator[BlockBuster]:
    """blockbuster active for the block, with the known findings allowed."""
    with blockbuster_ctx(SCANNED) as buster:
        for function, filename, caller in KNOWN_BLOCKING:
            buster.functions[function].can_block_in(filename, caller)
        yield buster
