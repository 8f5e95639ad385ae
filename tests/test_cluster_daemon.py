"""Cluster mode is not wired into the daemon yet: a config that asks for it is refused
(exit 78) instead of silently running this host alone on half a budget."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.process import run_autoloopd


def test_the_daemon_refuses_a_cluster_dsn_it_cannot_honour_yet(tmp_path: Path) -> None:
    """`[cluster] dsn` with `autoloopd --config`: exit 78, one line naming cluster.dsn."""
    (tmp_path / "a").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(
        '[daemon]\nstate_dir = "state"\n[cluster]\ndsn = "postgresql://localhost/x"\n'
        '[[targets]]\nname = "a"\npath = "a"\ndry_run = true\n'
    )
    done = run_autoloopd(["--config", str(config)])
    assert done.returncode == 78
    assert "cluster.dsn: the daemon does not run targets in cluster mode yet" in done.stderr
    assert not (tmp_path / "state").exists()
