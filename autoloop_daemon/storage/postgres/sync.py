"""Bringing a host's local journal and the cluster's log together when a lease is claimed.

Three cases, compared iteration by iteration:
- the local journal extends the cluster's log (a crash or an outage before the push, or a
  run recovery just recorded as interrupted): its extra entries are pushed;
- the cluster's log extends the local journal (the lease moved here from another host):
  the missing entries are appended locally, so the target continues where the cluster is;
- they disagree on some iteration (this host's run was fenced while another host ran the
  same number): the cluster wins; the local journal is kept beside it as
  `iteration_log.fenced-<n>.jsonl` and replaced by the cluster's log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from autoloop_daemon.models import LogEntry
from autoloop_daemon.storage.files import artifacts, fsio


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """What to do: entries to push, entries to add locally, or replace the local log."""

    push: tuple[LogEntry, ...] = ()
    append: tuple[LogEntry, ...] = ()
    replace: bool = False


def plan(local: Sequence[LogEntry], cluster: Sequence[LogEntry]) -> SyncPlan:
    """The plan for `local` against `cluster` (both oldest first; see the module docstring)."""
    common = min(len(local), len(cluster))
    if any(a != b for a, b in zip(local[:common], cluster[:common], strict=True)):
        return SyncPlan(replace=True)
    return SyncPlan(push=tuple(local[common:]), append=tuple(cluster[common:]))


def apply_locally(state_root: Path, sync: SyncPlan, cluster: Sequence[LogEntry]) -> Path | None:
    """Write the local side of `sync` (blocking: run it in a worker thread, under the state
    root's lock); the path the fenced journal was kept at, if it was replaced."""
    log_file = artifacts.log_path(state_root)
    if sync.replace:
        n = 1
        while (kept := log_file.with_name(f"iteration_log.fenced-{n}.jsonl")).exists():
            n += 1
        fsio.atomic_write_bytes(kept, log_file.read_bytes())
        body = b"".join(fsio.dumps_json_line(e.to_json()) for e in cluster)
        fsio.atomic_write_bytes(log_file, body)
        return kept
    for entry in sync.append:
        fsio.append_record(log_file, fsio.dumps_json_line(entry.to_json()))
    return None
