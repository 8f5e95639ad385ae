"""The files backend: one directory per state root, written crash-safe.

`FileStorage` owns `daemon.state_dir` (a lock file) and hands out one `FileTargetStore` per
target. A store's `open` takes the state root's lock and recovers it from its log
(recovery.py); `record` writes one finished run in ONE worker-thread call, in the order the
crash guarantees need: the log line (fsynced: the source of truth), the handoff (atomic, not
fsynced: recovery rebuilds a lost one from the log), then the state (fsynced).
"""

from __future__ import annotations

from pathlib import Path

import anyio

from autoloop_daemon.models import LogEntry, TargetSpec
from autoloop_daemon.storage.base import Recovered
from autoloop_daemon.storage.files import artifacts, fsio
from autoloop_daemon.storage.files import state_file as state_mod
from autoloop_daemon.storage.files.lock import StateLock
from autoloop_daemon.storage.files.recovery import recover
from autoloop_daemon.target_state import TargetState


def _commit(
    log_file: Path,
    entry: LogEntry,
    handoff: tuple[Path, bytes] | None,
    state_file: Path,
    state_bytes: bytes | None,
) -> None:
    fsio.append_record(log_file, fsio.dumps_json_line(entry.to_json()))
    if handoff is not None:
        fsio.make_dirs(handoff[0].parent)
        fsio.atomic_write_bytes(handoff[0], handoff[1], durable=False)
    if state_bytes is not None:
        fsio.atomic_write_bytes(state_file, state_bytes)


class FileTargetStore:
    """One target's state root on disk (see the module docstring)."""

    def __init__(self, spec: TargetSpec) -> None:
        """Describe the state root; nothing touches the disk until `open`."""
        self._spec = spec
        self._lock = StateLock(spec.state_root)
        self._state_file = state_mod.state_path(spec.state_root)
        self._log_file = artifacts.log_path(spec.state_root)

    @property
    def location(self) -> str:
        """The state file's path."""
        return str(self._state_file)

    async def open(self) -> Recovered:
        """Lock the state root and recover it from its log (recovery.py)."""
        return await recover(self._spec, self._lock)

    async def record(self, entry: LogEntry, handoff: str | None, state: TargetState | None) -> None:
        """Append the log line, write the handoff, replace the state: one worker call."""
        handoff_file = None
        if handoff is not None:
            path = artifacts.handoff_path(self._spec.state_root, entry.iteration)
            handoff_file = (path, handoff.encode())
        state_bytes = None if state is None else state_mod.encode_state(state)
        await anyio.to_thread.run_sync(
            _commit, self._log_file, entry, handoff_file, self._state_file, state_bytes
        )

    async def save(self, state: TargetState) -> None:
        """Replace the state file atomically and durably."""
        await state_mod.save_state(self._state_file, state)

    async def read_log(self) -> list[LogEntry]:
        """The whole iteration log (a torn tail is left for `open` to repair)."""
        entries, _torn = await anyio.to_thread.run_sync(
            lambda: artifacts.read_log(self._log_file, repair=False)
        )
        return entries

    def handoff_file(self, iteration: int) -> Path | None:
        """`handoffs/iteration-N.md` when it exists."""
        path = artifacts.handoff_path(self._spec.state_root, iteration)
        return path if path.is_file() else None

    def close(self) -> None:
        """Release the state root's lock."""
        self._lock.release()


class FileStorage:
    """The files backend for a daemon whose targets live under `state_dir`."""

    def __init__(self, state_dir: Path | None) -> None:
        """`state_dir` None: no daemon-wide lock (the one-target command line)."""
        self._lock = StateLock(state_dir) if state_dir is not None else None

    def target(self, spec: TargetSpec) -> FileTargetStore:
        """The store of `spec`'s state root."""
        return FileTargetStore(spec)

    def acquire(self) -> None:
        """Lock `state_dir` (creating it); StateLockedError names the holder."""
        if self._lock is not None:
            self._lock.acquire()

    def release(self) -> None:
        """Release `state_dir`'s lock."""
        if self._lock is not None:
            self._lock.release()
