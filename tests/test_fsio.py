"""Durable writes: atomic replace and fsynced appends leave old data intact on any failure."""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from autoloop_daemon.exceptions import StateWriteError
from autoloop_daemon.storage.files import fsio, regular


def _tmp_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def _fail(code: int) -> Any:
    def raiser(*_args: object) -> Any:
        raise OSError(code, os.strerror(code))

    return raiser


def _fail_on_call(real: Any, n: int, code: int) -> Any:
    """A stand-in for `real` whose n-th call (1-based) raises OSError(code)."""
    calls = 0

    def wrapper(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == n:
            raise OSError(code, os.strerror(code))
        return real(*args)

    return wrapper


# --- atomic_write_bytes -----------------------------------------------------------------


def test_atomic_write_creates_and_replaces_leaving_no_tmp(tmp_path: Path) -> None:
    """A new file gets the data; a second write replaces it; no temp file is left."""
    target = tmp_path / "state.json"
    fsio.atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    fsio.atomic_write_bytes(target, b"second, longer")
    assert target.read_bytes() == b"second, longer"
    fsio.atomic_write_bytes(target, b"")
    assert target.read_bytes() == b""
    assert _tmp_files(tmp_path) == []


def test_atomic_write_handles_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that accepts only a few bytes at a time still writes everything."""
    real_write = fsio._write

    def short(fd: int, data: memoryview) -> int:
        return real_write(fd, data[:3])

    monkeypatch.setattr(fsio, "_write", short)
    target = tmp_path / "f"
    fsio.atomic_write_bytes(target, b"0123456789abcdef")
    assert target.read_bytes() == b"0123456789abcdef"


@pytest.mark.parametrize("failing", ["_write", "_fsync", "_replace"])
def test_atomic_write_enospc_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """ENOSPC while writing, syncing or renaming: StateWriteError, old bytes, no temp file."""
    target = tmp_path / "state.json"
    old = b'{"iterations_completed": 3}\n'
    target.write_bytes(old)
    monkeypatch.setattr(fsio, failing, _fail(errno.ENOSPC))

    with pytest.raises(StateWriteError) as info:
        fsio.atomic_write_bytes(target, b"x" * 100_000)

    assert str(info.value) == f"cannot write {target}: {os.strerror(errno.ENOSPC)}"
    assert isinstance(info.value.__cause__, OSError)
    assert target.read_bytes() == old
    assert _tmp_files(tmp_path) == []


def test_atomic_write_erofs_on_open_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only file system (EROFS when creating the temp file) is a StateWriteError."""
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    real_open = os.open

    def open_erofs(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(".tmp"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_erofs)
    with pytest.raises(StateWriteError, match="Read-only file system"):
        fsio.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert _tmp_files(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_atomic_write_read_only_directory(tmp_path: Path) -> None:
    """A directory without write permission: StateWriteError naming the file, old file kept."""
    directory = tmp_path / "ro"
    directory.mkdir()
    target = directory / "state.json"
    target.write_bytes(b"old")
    directory.chmod(0o555)
    try:
        with pytest.raises(StateWriteError, match=str(target)):
            fsio.atomic_write_bytes(target, b"new")
        assert target.read_bytes() == b"old"
        assert _tmp_files(directory) == []
    finally:
        directory.chmod(0o755)


def test_atomic_write_missing_directory(tmp_path: Path) -> None:
    """Writing into a directory that does not exist is a StateWriteError, not a crash."""
    with pytest.raises(StateWriteError, match="No such file or directory"):
        fsio.atomic_write_bytes(tmp_path / "missing" / "f", b"x")


def test_atomic_write_directory_sync_failure_after_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO on the directory fsync (after the rename) still reports, and leaves one whole file."""
    target = tmp_path / "f"
    target.write_bytes(b"old")
    # The first _fsync is the temp file's, the second the directory's.
    monkeypatch.setattr(fsio, "_fsync", _fail_on_call(fsio._fsync, 2, errno.EIO))
    with pytest.raises(StateWriteError, match="directory sync"):
        fsio.atomic_write_bytes(target, b"new")
    assert target.read_bytes() in (b"old", b"new")
    assert _tmp_files(tmp_path) == []


def test_remove_stale_tmp_removes_only_our_temp_files(tmp_path: Path) -> None:
    """Leftovers of a killed atomic write go; other files, even other *.tmp, stay."""
    stale = [tmp_path / ".autoloop_state.json.1234.deadbeef.tmp", tmp_path / ".x.md.9.00ff.tmp"]
    keep = [tmp_path / "autoloop_state.json", tmp_path / "notes.tmp", tmp_path / "a.log"]
    for p in stale + keep:
        p.write_bytes(b"data")
    (tmp_path / ".dir.1.ab.tmp").mkdir()

    removed = fsio.remove_stale_tmp(tmp_path)

    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in keep)
    assert not any(p.exists() for p in stale)
    assert (tmp_path / ".dir.1.ab.tmp").is_dir()
    assert fsio.remove_stale_tmp(tmp_path / "missing") == []


def test_remove_stale_tmp_matches_the_names_atomic_write_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temp file left by a write killed before its rename is recognised as stale."""
    monkeypatch.setattr(fsio, "_replace", _fail(errno.EIO))
    monkeypatch.setattr(os, "unlink", _fail(errno.EIO))  # as if killed: nothing cleaned
    with pytest.raises(StateWriteError):
        fsio.atomic_write_bytes(tmp_path / "state.json", b"x")
    monkeypatch.undo()
    leftovers = _tmp_files(tmp_path)
    assert len(leftovers) == 1
    assert leftovers[0].name.startswith(f".state.json.{os.getpid()}.")
    assert fsio.remove_stale_tmp(tmp_path) == leftovers
    assert _tmp_files(tmp_path) == []


def test_tmp_names_are_unique_across_threads_and_name_a_forked_child(tmp_path: Path) -> None:
    """Temp names made by many threads at once never repeat and match what
    `remove_stale_tmp` removes; a forked child's names carry its own pid."""
    path = tmp_path / "state.json"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        names = list(pool.map(lambda _: fsio.tmp_name(path), range(4000)))
    assert len(set(names)) == len(names)
    assert all(fsio._TMP_RE.match(Path(name).name) for name in names)
    assert all(Path(name).name.startswith(f".state.json.{os.getpid()}.") for name in names)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write_end, fsio.tmp_name(path).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child_name = Path(pipe.read().decode()).name
    assert os.waitpid(child, 0)[1] == 0
    assert child_name.startswith(f".state.json.{child}.")
    assert fsio._TMP_RE.match(child_name)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o027, 0o077, 0o277])
def test_files_are_0640_whatever_the_umask_of_a_new_process(tmp_path: Path, umask: int) -> None:
    """The umask is read once per process (from /proc); created files end up 0640 both when
    it takes no bit of 0640 away (no fchmod needed) and when it does."""
    script = """
import os, sys
from pathlib import Path
from autoloop_daemon.storage.files import fsio, regular
root = Path(sys.argv[1])
fsio.atomic_write_bytes(root / "state.json", b"{}")
fsio.append_record(root / "log.jsonl", b"{}\\n")
os.close(regular.open_regular(root / "run.log", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
print(regular.umask_strips(0o640))
"""
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        umask=umask,
    )
    assert done.stdout.strip() == str(bool(umask & 0o640))
    for name in ("state.json", "log.jsonl", "run.log"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


def test_an_unreadable_umask_means_every_created_file_is_fchmodded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without /proc/self/status the umask is taken to strip every bit: the fchmod stays."""
    real_open = open

    def no_proc(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file).startswith("/proc/"):
            raise FileNotFoundError(errno.ENOENT, "no /proc here", str(file))
        return real_open(file, *args, **kwargs)

    regular._umask.cache_clear()
    monkeypatch.setattr("builtins.open", no_proc)
    try:
        assert regular.umask_strips(0o640) and regular.umask_strips(0o001)
        chmods: list[int] = []
        monkeypatch.setattr(os, "fchmod", lambda fd, mode: chmods.append(mode))
        fsio.atomic_write_bytes(tmp_path / "state.json", b"{}")
        assert chmods == [0o640]
    finally:
        monkeypatch.undo()
        regular._umask.cache_clear()


def test_a_temp_file_that_cannot_be_made_0640_is_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the umask takes bits away and the fchmod fails, `create_tmp` raises and
    removes the file it created; `atomic_write_bytes` keeps the old file."""
    (tmp_path / "state.json").write_bytes(b"old")
    monkeypatch.setattr(fsio, "umask_strips", lambda mode: True)
    monkeypatch.setattr(os, "fchmod", _fail(errno.EPERM))
    with pytest.raises(OSError):
        fsio.create_tmp(fsio.tmp_name(tmp_path / "state.json"))
    with pytest.raises(StateWriteError):
        fsio.atomic_write_bytes(tmp_path / "state.json", b"new")
    assert _tmp_files(tmp_path) == []
    assert (tmp_path / "state.json").read_bytes() == b"old"


# --- append_record ----------------------------------------------------------------------


def test_append_record_many_lines(tmp_path: Path) -> None:
    """Many appends produce exactly those lines, in order; the file is created 0o640."""
    path = tmp_path / "log.jsonl"
    lines = [f'{{"i":{i}}}\n'.encode() for i in range(200)]
    for line in lines:
        fsio.append_record(path, line)
    assert path.read_bytes() == b"".join(lines)
    assert path.stat().st_mode & 0o777 == 0o640  # exactly, whatever the umask


@pytest.mark.parametrize("failing", ["_write", "_fsync"])
def test_append_record_enospc_leaves_file_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """ENOSPC on write or fsync: StateWriteError and the file keeps its old bytes."""
    path = tmp_path / "log.jsonl"
    fsio.append_record(path, b"one\n")
    monkeypatch.setattr(fsio, failing, _fail(errno.ENOSPC))
    with pytest.raises(StateWriteError, match="No space left on device"):
        fsio.append_record(path, b"two\n")
    assert path.read_bytes() == b"one\n"


def test_append_record_partial_write_is_cut_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that stops halfway (short write, then ENOSPC) is truncated to the old size."""
    path = tmp_path / "log.jsonl"
    fsio.append_record(path, b"one\n")
    real_write = fsio._write
    monkeypatch.setattr(
        fsio, "_write", _fail_on_call(lambda fd, data: real_write(fd, data[:2]), 2, errno.ENOSPC)
    )
    with pytest.raises(StateWriteError):
        fsio.append_record(path, b"two two two\n")
    assert path.read_bytes() == b"one\n"


def test_append_record_failure_on_new_file_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first record that cannot be written does not leave an empty log behind."""
    path = tmp_path / "log.jsonl"
    monkeypatch.setattr(fsio, "_write", _fail(errno.ENOSPC))
    with pytest.raises(StateWriteError):
        fsio.append_record(path, b"one\n")
    assert not path.exists()


def test_make_dirs_creates_parents_and_reports_failure(tmp_path: Path) -> None:
    """make_dirs creates nested directories, is idempotent, and names a blocking file."""
    fsio.make_dirs(tmp_path / "a" / "b" / "c")
    fsio.make_dirs(tmp_path / "a" / "b" / "c")
    assert (tmp_path / "a" / "b" / "c").is_dir()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StateWriteError, match="cannot create"):
        fsio.make_dirs(tmp_path / "file" / "sub")


# --- async wrappers ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_write_json_atomic_indented_and_rejects_nan(tmp_path: Path) -> None:
    """JSON is written indented with a final newline; NaN is refused and the file kept."""
    path = tmp_path / "s.json"
    await fsio.write_json_atomic(path, {"a": 1, "b": "é"})
    text = path.read_text(encoding="utf-8")
    assert text == '{\n  "a": 1,\n  "b": "é"\n}\n'
    with pytest.raises(ValueError):
        await fsio.write_json_atomic(path, {"a": float("nan")})
    assert path.read_text(encoding="utf-8") == text
    assert _tmp_files(tmp_path) == []


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_write_text_atomic_and_append_json_line(tmp_path: Path) -> None:
    """Text is written as UTF-8; JSON lines are compact, one per call."""
    await fsio.write_text_atomic(tmp_path / "h.md", "# → done\n")
    assert (tmp_path / "h.md").read_text(encoding="utf-8") == "# → done\n"
    log = tmp_path / "log.jsonl"
    await fsio.append_json_line(log, {"iteration": 1, "cost_usd": 0.5})
    await fsio.append_json_line(log, {"iteration": 2, "cost_usd": 0.25})
    lines = log.read_bytes().split(b"\n")
    assert lines == [b'{"iteration":1,"cost_usd":0.5}', b'{"iteration":2,"cost_usd":0.25}', b""]
    assert [json.loads(x) for x in lines[:2]][1]["iteration"] == 2


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_async_write_failure_raises_state_write_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Errors in the worker thread reach the caller as StateWriteError."""
    path = tmp_path / "s.json"
    path.write_bytes(b"{}\n")
    monkeypatch.setattr(fsio, "_fsync", _fail(errno.ENOSPC))
    with pytest.raises(StateWriteError):
        await fsio.write_json_atomic(path, {"a": 1})
    assert path.read_bytes() == b"{}\n"
