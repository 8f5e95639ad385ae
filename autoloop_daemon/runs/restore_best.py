"""Putting a target's files back to its best version (`--restore-best` after a rejection).

The counterpart of `target_files.save_best`, built the same way: nothing is ever half
written where the orchestrator looks. Each file of `<state_root>/best/` that differs from the
target's is copied beside its place under a temporary name, fsynced and renamed over it (one
`rename`: the orchestrator sees the old file or the new one), and what the target has that
`best/` has not is removed. `.git`, `.feedback` (the reviewers' records, written after the
best version was taken) and a state root inside the target are left alone. A crash midway
leaves some files restored and some not; the restore is repeated at the next start until
the verdict is recorded as applied. Blocking: call it in a worker thread.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
import stat
from pathlib import Path

from autoloop_daemon.runs.target_files import BEST_LINK
from autoloop_daemon.storage.files.fsio import fsync_dir

_KEEP_NAMES = frozenset({".git", ".feedback"})
_TMP_SUFFIX = ".autoloopd-restore"


def best_dir(state_root: Path) -> Path | None:
    """The directory `<state_root>/best` points at, or None when there is no best version."""
    link = state_root / BEST_LINK
    if not link.is_symlink():
        return None
    copy = state_root / os.readlink(link)
    inside = copy.resolve().parent == state_root.resolve()
    return copy if inside and copy.is_dir() and not copy.is_symlink() else None


def _entries(root: Path, exclude: Path | None) -> dict[str, os.stat_result]:
    """Relative path -> lstat of everything below `root`, without the names left alone."""
    found: dict[str, os.stat_result] = {}
    stack = [root]
    while stack:
        directory = stack.pop()
        for name in sorted(os.listdir(directory)):
            path = directory / name
            if (directory == root and name in _KEEP_NAMES) or path == exclude:
                continue
            if name.endswith(_TMP_SUFFIX):
                continue  # a restore cut short: replaced or removed below
            info = path.lstat()
            found[path.relative_to(root).as_posix()] = info
            if stat.S_ISDIR(info.st_mode):
                stack.append(path)
    return found


def _same(src: Path, src_info: os.stat_result, dest: Path, dest_info: os.stat_result) -> bool:
    if stat.S_IFMT(src_info.st_mode) != stat.S_IFMT(dest_info.st_mode):
        return False
    if stat.S_ISLNK(src_info.st_mode):
        return os.readlink(src) == os.readlink(dest)
    if stat.S_ISREG(src_info.st_mode):
        return filecmp.cmp(src, dest, shallow=False)
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _put(src: Path, info: os.stat_result, dest: Path, old: os.stat_result | None) -> None:
    """Write `src` (a file or a link) to `dest` with one rename; keeps `dest`'s own mode."""
    tmp = dest.with_name(dest.name + _TMP_SUFFIX)
    _remove(tmp)
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(src), tmp)
    else:
        shutil.copyfile(src, tmp, follow_symlinks=False)
        mode = old.st_mode if old is not None and stat.S_ISREG(old.st_mode) else info.st_mode
        os.chmod(tmp, stat.S_IMODE(mode))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
    if old is not None and stat.S_ISDIR(old.st_mode):
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def restore_best(target: Path, state_root: Path, exclude: Path | None) -> int:
    """Make `target`'s files those of `<state_root>/best/`; returns how many paths changed.

    FileNotFoundError when there is no best version; OSError when a file cannot be written
    (what was restored before it stays restored).
    """
    best = best_dir(state_root)
    if best is None:
        raise FileNotFoundError(f"{state_root / BEST_LINK}: no best version to restore")
    wanted, have = _entries(best, None), _entries(target, exclude)
    changed = 0
    touched: set[Path] = set()
    for rel in sorted(wanted):  # parents before children
        src, dest, info = best / rel, target / rel, wanted[rel]
        old = have.get(rel)
        if old is not None and _same(src, info, dest, old):
            continue
        if stat.S_ISDIR(info.st_mode):
            if old is not None:
                _remove(dest)
            dest.mkdir()
        else:
            _put(src, info, dest, old)
        changed += 1
        touched.add(dest.parent)
    for rel in sorted(set(have) - set(wanted), reverse=True):  # children before parents
        with contextlib.suppress(FileNotFoundError):
            _remove(target / rel)
        changed += 1
        touched.add((target / rel).parent)
    for directory in touched:
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(directory)
    return changed
