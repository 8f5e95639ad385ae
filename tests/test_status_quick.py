"""`autoloopd status` finds the daemon's socket from the `[daemon]` table alone.

Pinned down: the shortcut gives the socket `load_config` would (default under state_dir, or
`control_socket` relative to the config file), and gives up (None: the whole config is read)
whenever it could differ: an AUTOLOOPD_DAEMON__* override, a `daemon` table written as
dotted keys, a table that does not validate.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autoloop_daemon.cli.control import quick_socket, socket_path
from autoloop_daemon.config.loader import load_config

TARGET = '\n[[targets]]\nname = "a"\npath = "a"\n'


def _config(tmp_path: Path, daemon: str) -> Path:
    (tmp_path / "a").mkdir(exist_ok=True)
    path = tmp_path / "c.toml"
    path.write_text(daemon + TARGET, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "daemon",
    [
        '[daemon]\nstate_dir = "st"\n',
        '[daemon]\nstate_dir = "st"\ncontrol_socket = "run/ctl.sock"  # here\n',
        '# a comment\n[budget]\nmax_cost_usd = 5.0\n\n[ daemon ]\nstate_dir = "st2"\n',
    ],
)
def test_the_shortcut_finds_the_socket_load_config_would(tmp_path: Path, daemon: str) -> None:
    path = _config(tmp_path, daemon)
    assert quick_socket(path, {}) == socket_path(load_config(path, environ={}))


@pytest.mark.parametrize(
    ("daemon", "environ"),
    [
        ('[daemon]\nstate_dir = "st"\n', {"AUTOLOOPD_DAEMON__STATE_DIR": "/elsewhere"}),
        ('daemon.state_dir = "st"\n', {}),
        ('[daemon]\nstate_dir = "st"\nno_such_key = 1\n', {}),
        ("[daemon]\nstate_dir = [\n", {}),
        ("", {}),
    ],
)
def test_the_shortcut_gives_up_where_it_could_differ(
    tmp_path: Path, daemon: str, environ: dict[str, str]
) -> None:
    assert quick_socket(_config(tmp_path, daemon), environ) is None
