"""Configured paths: the loader's string fast path resolves exactly as pathlib does.

`_resolve` with a `folders` cache (how the loader resolves every target's path and state
root) handles a plain path on strings and leaves the rest (`~`, `.`, `..`, `//`, a
trailing `/`, a target directory that is a link) to `Path.resolve` and
`resolve_state_root`. Each case below is resolved both ways, against real directories and
links in `tmp_path`, and must agree, for a target directory (links followed) and a state
root (its last component kept).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autoloop_daemon.config.loader import _kind, _kind_or_error, _resolve
from autoloop_daemon.exceptions import ConfigError


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """base/ (the config's folder), real/ with dirs, and links to them."""
    base = tmp_path / "base"
    (base / "skills" / "a").mkdir(parents=True)
    (tmp_path / "real" / "b").mkdir(parents=True)
    (base / "linked").symlink_to(tmp_path / "real")  # a folder that is a link
    (base / "skills" / "link-to-b").symlink_to(tmp_path / "real" / "b")  # a last link
    (base / "file").write_text("not a directory")
    return base


CASES = [
    "skills/a",
    "skills/missing",
    "linked/b",
    "linked/missing",
    "skills/link-to-b",
    "./skills/a",
    "skills/./a",
    "skills/../skills/a",
    "skills//a",
    "skills/a/",
    "skills/a/.",
    "linked/..",
    "..",
    ".",
    "",
    "~",
    "file",
    "file/below",
]


@pytest.mark.parametrize("text", CASES)
@pytest.mark.parametrize("keep_last", [False, True])
def test_the_fast_path_resolves_as_pathlib_does(tree: Path, text: str, keep_last: bool) -> None:
    def resolve(folders: dict[str, str] | None) -> Path | str:
        try:
            return _resolve(text, tree, "c.toml", "k", keep_last=keep_last, folders=folders)
        except ConfigError as exc:
            return str(exc)

    full = resolve(None)
    assert resolve({}) == full
    folders: dict[str, str] = {}
    resolve(folders)  # a cache filled by an earlier call gives the same answer again
    assert resolve(folders) == full


def test_absolute_paths_take_the_fast_path_too(tree: Path) -> None:
    folders: dict[str, str] = {}
    target = str(tree / "skills" / "a")
    assert _resolve(target, Path("/elsewhere"), "c.toml", "k", folders=folders) == Path(target)
    assert folders == {str(tree / "skills"): str((tree / "skills").resolve())}


def test_kind_tells_a_directory_a_file_a_link_and_nothing(tree: Path) -> None:
    assert _kind(tree / "skills") == "dir"
    assert _kind(tree / "file") == "other"
    assert _kind(tree / "skills" / "link-to-b") == "dir"  # followed
    assert _kind(tree / "skills" / "link-to-b", follow=False) == "link"
    assert _kind(tree / "missing") is None
    assert _kind(tree / "file" / "below") is None  # a file as a folder: nothing there


def test_a_path_that_cannot_be_looked_at_is_an_error_not_nothing(tree: Path) -> None:
    """Only "nothing there" reads as None (as `Path.exists`); a name too long for the file
    system is an error, which the loader reports naming the key."""
    with pytest.raises(OSError, match="too long"):
        _kind(tree / ("x" * 300))
    with pytest.raises(ConfigError, match=r"targets\[0\]\.path: cannot look at .*too long"):
        _kind_or_error(tree / ("x" * 300), "c.toml: targets[0].path")
