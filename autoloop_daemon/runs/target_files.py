"""What an iteration did to the target's files: a content hash, and a copy of the best version.

Both walk the target directory, skipping `.git`, `.feedback` and the state root when it lies
inside the target; symbolic links are recorded (hash) or recreated (copy) as links, never followed.
Blocking: call them in a worker thread.

The best version lives in `<state_root>/best`, a symbolic link to `best-iteration-N/`: a new
copy is built beside the old one and the link is replaced with one `rename`, so `best/` is
always one whole version (restore: `cp -a <state_root>/best/. <target>/`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from autoloop_daemon.storage.files.fsio import DIR_MODE, FILE_MODE
from autoloop_daemon.storage.files.regular import open_regular

BEST_LINK = "best"
_BEST_PREFIX = "best-iteration-"
# `.feedback` is what the loop feeds the orchestrator (reviewers' records among it), not
# what a candidate changed: a verdict written there is no change of the target's files.
_SKIP_NAMES = frozenset({".git", ".feedback"})
_CHUNK = 1 << 20


def _walk(root: Path, exclude: Path | None) -> Iterator[tuple[str, Path, os.stat_result]]:
    """(relative path, path, lstat) of every entry below `root`, sorted, skipping excluded."""
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = directory / name
            if name in _SKIP_NAMES and directory == root:
                continue
            if exclude is not None and path == exclude:
                continue
            try:
                info = path.lstat()
            except OSError:
                continue
            yield path.relative_to(root).as_posix(), path, info
            if stat.S_ISDIR(info.st_mode):
                stack.append(path)


def content_hash_if_dir(target: Path, exclude: Path | None = None) -> str | None:
    """`content_hash` of `target`, or None when it is not a directory (gone: nothing to
    compare a run's changes with)."""
    return content_hash(target, exclude) if target.is_dir() else None


def content_hash(target: Path, exclude: Path | None = None) -> str:
    """A BLAKE2b hash of the names, link targets and bytes of every file below `target`."""
    digest = hashlib.blake2b(digest_size=16)
    for rel, path, info in sorted(_walk(target, exclude), key=lambda item: item[0]):
        if stat.S_ISLNK(info.st_mode):
            digest.update(f"L\0{rel}\0{os.readlink(path)}\0".encode())
        elif stat.S_ISREG(info.st_mode):
            digest.update(f"F\0{rel}\0{info.st_size}\0".encode())
            # open_regular: a file swapped for a FIFO since the lstat cannot block the hash
            with (
                contextlib.suppress(OSError),
                os.fdopen(open_regular(path, os.O_RDONLY), "rb") as handle,
            ):
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
        elif stat.S_ISDIR(info.st_mode):
            digest.update(f"D\0{rel}\0".encode())
    return digest.hexdigest()


def save_best(target: Path, state_root: Path, iteration: int, exclude: Path | None) -> Path:
    """Copy `target` to `<state_root>/best-iteration-N/` and point `best` at it; returns it.

    Earlier copies are removed once the link has moved, so one copy is kept. Like every
    file of a state root, the copy is 0750 (directories) and 0640 (files; 0750 for a file
    its owner may execute) whatever the umask and the target's own modes.
    """
    copy_dir = state_root / f"{_BEST_PREFIX}{iteration}"
    if copy_dir.exists():
        shutil.rmtree(copy_dir)
    copy_dir.mkdir()
    os.chmod(copy_dir, DIR_MODE)
    for rel, path, info in _walk(target, exclude):
        dest = copy_dir / rel
        if stat.S_ISDIR(info.st_mode):
            dest.mkdir(exist_ok=True)
            os.chmod(dest, DIR_MODE)
        elif stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(path), dest)
        elif stat.S_ISREG(info.st_mode):
            shutil.copy2(path, dest, follow_symlinks=False)
            os.chmod(dest, DIR_MODE if info.st_mode & stat.S_IXUSR else FILE_MODE)
    link = state_root / BEST_LINK
    tmp_link = state_root / f".{BEST_LINK}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    os.symlink(copy_dir.name, tmp_link)
    os.replace(tmp_link, link)
    for old in state_root.glob(f"{_BEST_PREFIX}*"):
        if old != copy_dir and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
    return copy_dir
