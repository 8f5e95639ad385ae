"""README's "Operating a running daemon" can be tried as written: its command block runs, line
by line and in order, against a real daemon on the shipped `examples/operate.toml` (copied
with `examples/skills` into tmp_path, so the repository stays clean), with real sockets."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoloop_daemon.exit_codes import EXIT_REFUSED
from tests.helpers.control import free_port, target_status
from tests.helpers.daemon import Daemon
from tests.helpers.process import child_env, run_autoloopd
from tests.helpers.wait import wait_for

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_PORT = "8765"


def readme_commands() -> list[list[str]]:
    """The `sh` block of README's "Operating a running daemon", one argv per line (comments
    dropped)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Operating a running daemon\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [argv for line in block.splitlines() if (argv := shlex.split(line, comments=True))]


def test_the_example_config_runs_until_stopped_and_checks(tmp_path: Path) -> None:
    """The example validates and holds what the README promises: a loopback listener,
    continuous simulator targets with no plateau or oscillation stop."""
    checked = run_autoloopd(["--config", str(REPO / "examples" / "operate.toml"), "--check"])
    assert checked.returncode == 0, checked.stderr
    assert "continuous" in checked.stdout and "dry_run" in checked.stdout
    text = (REPO / "examples" / "operate.toml").read_text()
    assert f'http_listen = "127.0.0.1:{EXAMPLE_PORT}"' in text
    assert "plateau_window = 0" in text and "oscillation_window = 0" in text


@pytest.fixture
def short_tmp_path() -> Iterator[Path]:
    """A directory with a short path: the example's default control socket,
    `examples/state-operate/autoloopd.sock` under it, must fit a unix socket's 108 bytes,
    which pytest's `tmp_path` under pytest-xdist (`.../popen-gwN/test_the_readme_...`) does
    not leave room for."""
    with tempfile.TemporaryDirectory(
        prefix="operate-", dir="/tmp", ignore_cleanup_errors=True
    ) as d:
        yield Path(d)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_commands_run_as_written(short_tmp_path: Path) -> None:
    """Start the daemon as the first line says, then run every other line as written (the
    port of the loopback listener moved to a free one so parallel runs do not collide;
    `xdg-open` replaced by fetching the page it would open). Each exits 0 (run-now may say
    that an iteration is already running: exit 4), and each says what the README says."""
    shutil.copytree(REPO / "examples" / "skills", short_tmp_path / "examples" / "skills")
    shutil.copy(REPO / "examples" / "operate.toml", short_tmp_path / "examples" / "operate.toml")
    port = str(free_port())
    env = child_env({"AUTOLOOPD_DAEMON__HTTP_LISTEN": f"127.0.0.1:{port}"})
    first, *rest = readme_commands()
    assert first == ["autoloopd", "--config", "examples/operate.toml"]
    daemon = Daemon(Path(first[2]), short_tmp_path / "daemon.out", env=env, cwd=short_tmp_path)
    daemon.wait_event("daemon_ready")
    daemon.wait_event("http_listening")
    fetched: list[str] = []  # what the curl lines printed, in order
    for argv in rest:
        argv = [a.replace(EXAMPLE_PORT, port) for a in argv]
        if argv[0] == "autoloopd":
            argv = [sys.executable, "-m", "autoloop_daemon", *argv[1:]]
        elif argv[0] == "xdg-open":
            argv = ["curl", "-sf", argv[1]]
        done = subprocess.run(
            argv, cwd=short_tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        allowed = (0, EXIT_REFUSED) if "run-now" in argv else (0,)
        assert done.returncode in allowed, (argv, done.stdout, done.stderr)
        if argv[0] == "curl":
            fetched.append(done.stdout)
    sock = short_tmp_path / "examples" / "state-operate" / "autoloopd.sock"
    wait_for(
        lambda: target_status(sock, "tech-article")["status"] == "stopped_operator",
        what="tech-article stopped by the operator",
    )
    assert target_status(sock, "commit-messages")["status"] != "stopped_operator"
    assert len(fetched) == 3
    assert all("autoloopd_operator_commands_total" in m for m in fetched[:2])
    assert "<html" in fetched[2].lower()  # the dashboard
    assert daemon.stop() == 0
