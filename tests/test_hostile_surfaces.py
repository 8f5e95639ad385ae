"""Issue 19, tried as an attacker or a careless operator would: hostile target names, a
SIGHUP before the handler exists, a webhook that trickles at shutdown, an alert command that
dies at once, and hostile files and names under `autoloopd report`. Each runs the real
binary."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoloop_daemon.exit_codes import EXIT_CONFIG
from tests.helpers.config import write_config
from tests.helpers.process import run_autoloopd

HOSTILE_NAMES = {
    "bidi override": "evil\u202etxt.exe",
    "bidi isolate": "a\u2066b",
    "line separator": "a\u2028b",
    "paragraph separator": "a\u2029b",
    "zero-width space": "a\u200bb",
    "escape": "a\x1b[31mb",
    "only spaces": "   ",
    "only a tab": "\t",
    "ideographic space only": "\u3000",
}


@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_a_target_name_that_prints_as_another_is_refused_naming_the_key(
    tmp_path: Path, name: str
) -> None:
    """Control, bidi and separator characters or only whitespace: `--check` refuses the
    config (EXIT_CONFIG) with one line naming `targets[0].name`."""
    (tmp_path / "skill").mkdir()
    config = write_config(
        tmp_path / "autoloopd.toml",
        targets=[{"name": name, "path": str(tmp_path / "skill"), "dry_run": True}],
        daemon={"state_dir": str(tmp_path / "state")},
    )
    result = run_autoloopd(["--config", str(config), "--check"])
    assert result.returncode == EXIT_CONFIG, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "targets[0].name" in lines[0], result.stderr
    assert name not in lines[0] or name.isspace()  # escaped: it cannot reshape the line
    assert not (tmp_path / "state").exists()


def test_names_with_joiners_and_inner_spaces_are_still_fine(tmp_path: Path) -> None:
    """The check is no wider than it must be: an emoji sequence (ZWJ) and spaces pass."""
    (tmp_path / "skill").mkdir()
    config = write_config(
        tmp_path / "autoloopd.toml",
        targets=[
            {"name": " team 👩\u200d💻 skill ", "path": str(tmp_path / "skill"), "dry_run": True}
        ],
        daemon={"state_dir": str(tmp_path / "state")},
    )
    result = run_autoloopd(["--config", str(config), "--check"])
    assert result.returncode == 0, result.stderr
