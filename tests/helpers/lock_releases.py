"""Which threads release state locks: `StateLock.release` recorded for a test."""

from __future__ import annotations

import threading

import pytest

from autoloop_daemon.storage.files.lock import StateLock


def record_release_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now until the test ends, the ident of the thread of each `StateLock.release`
    call, in order (the list returned fills up)."""
    released_on: list[int] = []
    real_release = StateLock.release

    def recording(lock: StateLock) -> None:
        released_on.append(threading.get_ident())
        real_release(lock)

    monkeypatch.setattr(StateLock, "release", recording)
    return released_on
