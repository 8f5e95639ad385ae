"""The state file as plain JSON objects, for tests: the dict-shaped wrappers of
`storage/files/state_file.py` (the package itself works on `TargetState`).

Import it where a test used `state_file as state`: the names the package keeps are
re-exported, and the others (`new_state`, `apply_limits`, `reconcile`, `save_state`) take
and give the file's JSON object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread

from autoloop_daemon.clock import now_utc, to_iso
from autoloop_daemon.models import LogEntry, TargetSpec
from autoloop_daemon.policy.progress import Progress
from autoloop_daemon.storage.files import fsio
from autoloop_daemon.storage.files import state_file as _files
from autoloop_daemon.storage.files.lock import check_owned_root
from autoloop_daemon.storage.files.state_file import STATE_NAME, state_path
from autoloop_daemon.target_state import TargetState

__all__ = [
    "STATE_NAME", "apply_limits", "encode_state", "load_state", "new_state", "reconcile",
    "save_state", "seed_entries", "state_path",
]  # fmt: skip


def load_state(
    path: Path, *, on_migrate: Callable[[str], None] | None = None
) -> dict[str, Any] | None:
    """`state_file.load_state` as the file's JSON object (every known field present)."""
    state = _files.load_state(path, on_migrate=on_migrate)
    return None if state is None else state.to_json()


def new_state(spec: TargetSpec, now_iso: str) -> dict[str, Any]:
    """A fresh state file object for `spec`: every schema field at its initial value."""
    return TargetState.new(spec, now_iso).to_json()


def apply_limits(state: Mapping[str, Any], spec: TargetSpec) -> dict[str, Any]:
    """A copy of `state` with the target and its limits taken from `spec`."""
    typed = TargetState.from_json(dict(state))
    typed.apply_limits(spec)
    return typed.to_json()


def reconcile(
    state: Mapping[str, Any],
    entries: Sequence[LogEntry],
    weights: Mapping[str, float],
    min_improvement: float = 0.0,
) -> dict[str, Any]:
    """A copy of `state` with every field the log determines recomputed from `entries`
    (what recovery does with `Progress.apply_to`)."""
    typed = TargetState.from_json(dict(state))
    Progress.from_entries(entries, weights, min_improvement).apply_to(typed)
    return typed.to_json()


def seed_entries(state: Mapping[str, Any]) -> list[LogEntry]:
    """`state_file.seed_entries` of a (checked) state file object."""
    return _files.seed_entries(TargetState.from_json(dict(state)))


def encode_state(state: TargetState | dict[str, Any]) -> bytes:
    """Stamp `updated_at` (in place) and serialise the state file's bytes."""
    if isinstance(state, TargetState):
        return _files.encode_state(state)
    state["updated_at"] = to_iso(now_utc())
    return fsio.dumps_json(state)


async def save_state(path: Path, state: TargetState | dict[str, Any]) -> None:
    """Stamp `updated_at` and replace the state file atomically, off the event loop."""
    data = encode_state(state)

    def work() -> None:
        check_owned_root(Path(path).parent)
        fsio.atomic_write_bytes(path, data)

    await anyio.to_thread.run_sync(work)
