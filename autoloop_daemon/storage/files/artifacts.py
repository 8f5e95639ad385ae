"""The files of a state root besides the state itself: iteration log, handoffs, run logs.

`iteration_log.jsonl` is the source of truth. It is append-only, one line per orchestrator
run, and iteration numbers run 1..n in order. On start a torn last line (a write cut short
by a crash: no newline, not JSON, or an object without its required fields) is cut off.
Anything else wrong is corruption and is refused untouched: a bad line before the last, and
on any line a value no run can produce (a negative, non-finite or absurd cost, a wrong type,
nesting too deep for the parser), since a write cut short cannot make one.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import anyio.to_thread

from autoloop_daemon.exceptions import (
    LogLineIncompleteError,
    NotRegularFileError,
    StateCorruptError,
    StateWriteError,
)
from autoloop_daemon.models import LogEntry
from autoloop_daemon.storage.files import fsio

LOG_NAME = "iteration_log.jsonl"
RUNS_DIR = "runs"
HANDOFFS_DIR = "handoffs"
LEARNER_DIR = "learner"
TORN_TAIL_READ = 1 << 20  # bytes of an unterminated last line read (it is cut anyway)
FEEDBACK_DIR = "feedback"


def log_path(state_root: Path) -> Path:
    """`<state_root>/iteration_log.jsonl`."""
    return Path(state_root) / LOG_NAME


def run_log_path(state_root: Path, iteration: int) -> Path:
    """`<state_root>/runs/iteration-N.log`: the orchestrator's output."""
    return Path(state_root) / RUNS_DIR / f"iteration-{iteration}.log"


def handoff_path(state_root: Path, iteration: int) -> Path:
    """`<state_root>/handoffs/iteration-N.md`: what iteration N decided."""
    return Path(state_root) / HANDOFFS_DIR / f"iteration-{iteration}.md"


def learner_path(state_root: Path, iteration: int) -> Path:
    """`<state_root>/learner/iteration-N.json`: the scorer's output."""
    return Path(state_root) / LEARNER_DIR / f"iteration-{iteration}.json"


def recent_feedback_path(state_root: Path, store_name: str) -> Path:
    """`<state_root>/feedback/<store>-recent.jsonl`: a session-feedback store's recent lines,
    as the orchestrator would have read them (see runs/feedback.py)."""
    return Path(state_root) / FEEDBACK_DIR / f"{Path(store_name).stem}-recent.jsonl"


def ensure_layout(state_root: Path, *, unsynced: list[Path] | None = None) -> None:
    """Create the state root and its `runs/`, `handoffs/`, `learner/` (with parents, 0750).

    Each new directory entry is fsynced, or, with `unsynced`, its directory is appended to
    it for the caller to sync (`fsio.make_dirs`). OSError -> StateWriteError naming the
    directory.
    """
    root = Path(state_root)
    fsio.make_dirs(root, unsynced=unsynced)
    created = False
    try:
        for name in (RUNS_DIR, HANDOFFS_DIR, LEARNER_DIR):
            try:
                fsio.make_dir(root / name)
                created = True
            except FileExistsError:
                if not (root / name).is_dir():
                    raise NotADirectoryError(errno.ENOTDIR, str(root / name)) from None
        if created and unsynced is None:
            fsio.fsync_dir(root)  # once for all three new entries
        elif created and unsynced is not None and root not in unsynced:
            unsynced.append(root)
    except OSError as exc:
        raise StateWriteError(f"cannot create {root}: {fsio.describe_oserror(exc)}") from exc


# --- the iteration log ----------------------------------------------------------------


def _parse_line(raw: bytes) -> LogEntry:
    """One log line (without its newline) as an entry; ValueError says what is wrong.

    LogLineIncompleteError when the line is not a whole entry (empty, not UTF-8, not JSON,
    not an object, a required field missing), a plain ValueError for a whole line holding a
    value no run can produce.
    """
    if not raw.strip():
        raise LogLineIncompleteError("empty line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LogLineIncompleteError(f"not UTF-8 (byte {exc.start})") from None
    try:
        data = fsio.parse_json(text)
    except json.JSONDecodeError as exc:
        raise LogLineIncompleteError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    return LogEntry.from_json(data)


def read_log(path: Path, *, repair: bool = True) -> tuple[list[LogEntry], int]:
    """Read the iteration log; returns its entries and the bytes of torn tail cut off.

    A missing file gives ([], 0). A last line without a newline, or one that is not a whole
    entry (see `_parse_line`), is a torn tail: the file is truncated (and fsynced) to the
    end of the previous good line and the number of bytes removed is returned. With
    `repair=False` (for readers that do not own the state root, e.g. `autoloopd status`)
    the tail is skipped and counted but the file is not touched.

    A bad line before the last one, a line (the last too) with a value no run can produce
    (negative, non-finite or absurd cost, wrong types, too deeply nested), a duplicated
    iteration number or numbers not 1..n in order are corruption:
    StateCorruptError("<path>:<line>: <problem>") is raised and the file is left as it is.
    So is a log that is not a regular file ("<path>: is a FIFO, not a regular file"). A
    truncation that fails raises StateWriteError.
    """
    path = Path(path)
    data = read_log_bytes(path)
    if data is None:
        return [], 0
    entries, torn, _end = parse_log(path, data, repair=repair)
    return entries, torn


def read_log_bytes(path: Path) -> bytes | None:
    """The log's bytes; None when it does not exist. StateCorruptError when it is not a
    regular file or cannot be read.

    Of a last line without a newline (torn, whatever it holds) at most TORN_TAIL_READ bytes
    are read: a 2 GB one is cut all the same, without being held in memory (the torn byte
    count then says TORN_TAIL_READ).
    """
    try:
        return fsio.read_regular_lines(path, TORN_TAIL_READ)
    except FileNotFoundError:
        return None
    except NotRegularFileError as exc:
        raise StateCorruptError(f"{path}: {exc}") from None
    except OSError as exc:
        raise StateCorruptError(f"{path}: cannot read: {fsio.describe_oserror(exc)}") from exc


def parse_log(
    path: Path, data: bytes, *, start: int = 0, first_iteration: int = 1, repair: bool = True
) -> tuple[list[LogEntry], int, int]:
    """`read_log` on the log's bytes `data` from offset `start` (just past a newline), where
    iteration `first_iteration` must be; returns (entries, torn tail bytes, end offset of
    the last good line). Line numbers in errors count from the start of the file."""
    entries: list[LogEntry] = []
    good_end = start  # offset just past the last good line's newline
    lineno = first_iteration - 1
    while good_end < len(data):
        lineno += 1
        newline = data.find(b"\n", good_end)
        if newline < 0:
            break  # no newline: a torn tail, whether or not it would parse
        try:
            entry = _parse_line(data[good_end:newline])
        except ValueError as exc:
            if newline + 1 == len(data) and isinstance(exc, LogLineIncompleteError):
                break  # the last line, and what a cut write leaves: a torn tail
            raise StateCorruptError(f"{path}:{lineno}: {exc}") from None
        expected = len(entries) + first_iteration
        if entry.iteration != expected:
            if entry.iteration < expected:
                problem = f"iteration {entry.iteration} appears twice"
            else:
                problem = f"iteration {entry.iteration} out of order (expected {expected})"
            raise StateCorruptError(f"{path}:{lineno}: {problem}")
        entries.append(entry)
        good_end = newline + 1

    torn = len(data) - good_end
    if torn and repair:
        fsio.truncate_file(path, good_end)
    return entries, torn, good_end


async def append_log(path: Path, entry: LogEntry) -> None:
    """Append one entry to the iteration log durably (one write, fsync) in a worker thread.

    Raises StateWriteError (the log is left as it was) and ValueError for non-finite
    numbers in the entry.
    """
    await fsio.append_json_line(path, entry.to_json())


# --- handoffs -------------------------------------------------------------------------


async def write_handoff(state_root: Path, iteration: int, text: str) -> Path:
    """Write `handoffs/iteration-N.md` atomically (creating `handoffs/`); returns its path.

    Raises StateWriteError when the directory or the file cannot be written.
    """
    path = handoff_path(state_root, iteration)

    def _work() -> None:
        fsio.make_dirs(path.parent)
        fsio.atomic_write_bytes(path, text.encode())

    await anyio.to_thread.run_sync(_work)
    return path
