"""Open files at fleet scale (issue 24): RLIMIT_NOFILE checked against the fleet at start,
and a shutdown's commit of every state holding no descriptor per file.

A real `autoloopd` under a real lowered limit (set in the child before it execs), and a
real group commit of hundreds of files in a child process whose soft limit is too small to
hold them all open at once.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from autoloop_daemon.config.open_files import descriptors_needed
from tests.helpers.daemon import Lab
from tests.helpers.process import AUTOLOOPD, child_env, kill
from tests.helpers.wait import wait_for

REPO = Path(__file__).resolve().parent.parent
COOLING = {"mode": "continuous", "cooldown_minutes": 10, "term_grace_seconds": 2.0}


def nofile(soft: int, hard: int) -> Callable[[], None]:
    """A preexec_fn giving the child these soft and hard RLIMIT_NOFILE."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def fleet(tmp_path: Path, n: int) -> Lab:
    """A lab whose config has `n` cooling `keep` targets (4 iterations at once)."""
    lab = Lab(tmp_path)
    names = [f"t{i:03d}" for i in range(n)]
    lab.write([lab.target(name, "keep") for name in names], defaults=COOLING)
    return lab


def test_a_fleet_above_the_hard_limit_is_refused_naming_the_number(tmp_path: Path) -> None:
    """40 targets, hard limit 200: refused at once (EX_CONFIG, before any state root is
    made), the message naming the number needed and LimitNOFILE; `--check` says the same."""
    lab = fleet(tmp_path, 40)
    needed = descriptors_needed(40, 4)
    assert needed > 200
    for extra in ([], ["--check"]):
        done = subprocess.run(
            [*AUTOLOOPD, "--config", str(lab.config), *extra],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(None),
            stdin=subprocess.DEVNULL,
            preexec_fn=nofile(200, 200),
            check=False,
        )
        assert done.returncode == 78, done.stderr
        assert f"need {needed} open files" in done.stderr
        assert f"LimitNOFILE={needed}" in done.stderr and "is 200" in done.stderr
    assert not (lab.state_root("t000") / "autoloop_state.json").exists()


def test_the_soft_limit_is_raised_to_what_the_fleet_needs(tmp_path: Path) -> None:
    """Soft limit 64, hard 4096, 40 targets: the daemon raises its soft limit to the
    number the fleet needs, runs every target, and stops cleanly."""
    lab = fleet(tmp_path, 40)
    out = tmp_path / "daemon.out"
    with out.open("wb") as handle:
        proc = subprocess.Popen(
            [*AUTOLOOPD, "--config", str(lab.config)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(None),
            preexec_fn=nofile(64, 4096),
        )
    try:
        wait_for(lambda: b'"daemon_ready"' in out.read_bytes(), timeout=60, what="READY")
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert row.split()[3:5] == [str(descriptors_needed(40, 4)), "4096"]
        wait_for(
            lambda: out.read_bytes().count(b'"iteration_finished"') >= 40,
            timeout=120,
            what="every target's iteration",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, out.read_text()[-3000:]
    finally:
        kill(proc)
    lab.check_state_roots()


def test_a_large_commit_batch_holds_no_descriptor_per_file(tmp_path: Path) -> None:
    """600 states committed in one batch by a process allowed ~100 more descriptors than
    it holds: every file is written (before, each temp file stayed open until the syncfs,
    and a shutdown of 10,000 targets failed its last checkpoints with EMFILE)."""
    script = textwrap.dedent(
        f"""
        import os, resource, sys
        from pathlib import Path
        import anyio
        from autoloop_daemon.storage.files.group_commit import GroupCommit

        base = Path({str(tmp_path)!r})
        paths = [base / f"d{{i:03d}}" / "state.json" for i in range(600)]
        for p in paths:
            p.parent.mkdir()
        held = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (held + 100, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))
        errors = []

        async def main():
            commits = GroupCommit()
            async def one(p):
                try:
                    await commits.write(p, b'{{"ok": true}}\\n')
                except Exception as exc:
                    errors.append(str(exc))
            async with anyio.create_task_group() as tg:
                for p in paths:
                    tg.start_soon(one, p)

        anyio.run(main)
        print(len(errors), errors[:1])
        sys.exit(1 if errors else 0)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    written = sorted(tmp_path.glob("d*/state.json"))
    assert len(written) == 600
    assert {p.read_bytes() for p in written} == {b'{"ok": true}\n'}
    assert not list(tmp_path.glob("d*/.*.tmp"))
