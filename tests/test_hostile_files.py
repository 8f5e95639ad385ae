"""Files that are not files, modes, linked state roots and injected handoff lines.

Through the real binary. An orchestrator can put a FIFO, a socket, a device node, a directory
or a symbolic link wherever autoloopd keeps a file in its state root. autoloopd never opens
such a thing in a way that can block or follow the link: a state-root file (state, log,
lock) is refused with exit 65 naming it and what it is; a run log that is not a regular file
fails that one iteration ("not started: ..."), the next one runs; a learner file is named in
a warning and skipped; `autoloopd status` reports the state unreadable. Before this, a FIFO
state file or log kept the daemon from ever reaching READY, and it ignored SIGTERM (twice).

Also: directories are created 0750 and files 0640 whatever the umask; a state root that is a
symbolic link is refused at start, one replaced by a link while autoloopd runs stops its
target with a message saying what to do, and nothing is written through the link; candidate
ids, artifact paths and dimension names cannot add lines to a handoff.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from autoloop_daemon.policy.handoff import render_handoff
from tests.helpers.audit import read_state
from tests.helpers.daemon import Lab
from tests.helpers.fakes import fake, orchestrator_cmd
from tests.helpers.hostile import one_stderr_line, run_one_target, snapshot
from tests.helpers.logs import json_lines, read_log
from tests.helpers.process import AUTOLOOPD, child_env, run_autoloopd, start_autoloopd, stop
from tests.helpers.wait import wait_for

EX_DATAERR = 65
QUICK_RETRY = ("--retry-backoff-seconds", "0.05")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    if len(str(path).encode()) > 100:
        pytest.skip("path too long for a unix socket")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


def _chardev(path: Path) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")


def _directory(path: Path) -> None:
    path.mkdir()
    (path / "inside").write_text("x")


def _symlink(path: Path) -> None:
    real = path.with_name(path.name + ".real")
    real.write_text("{}\n")
    path.symlink_to(real.name)


KINDS: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (_fifo, "is a FIFO, not a regular file"),
    "socket": (_socket, "is a socket, not a regular file"),
    "chardev": (_chardev, "is a character device, not a regular file"),
    "directory": (_directory, "is a directory, not a regular file"),
    "symlink": (_symlink, "is a symbolic link, not a regular file"),
}
ROOT_FILES = ("autoloop_state.json", "iteration_log.jsonl", ".autoloopd.lock")


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("name", ROOT_FILES)
def test_special_file_in_the_state_root_is_refused_at_once(
    tmp_path: Path, name: str, kind: str
) -> None:
    """State, log or lock file as a FIFO, socket, device, directory or symlink: exit 65 at
    once (never a hang), one line naming the file and what it is; it is left as it was."""
    root = tmp_path / "state"
    root.mkdir()
    make, problem = KINDS[kind]
    make(root / name)
    before = snapshot(root)
    done = run_one_target(tmp_path, root, timeout=30)
    assert done.returncode == EX_DATAERR, done.stdout + done.stderr
    line = one_stderr_line(done.stderr)
    assert f"{root / name}: " in line and problem in line, line
    after = snapshot(root)
    assert {k: after.get(k) for k in before} == before


@pytest.mark.parametrize("kind", ["fifo", "socket", "directory", "symlink"])
def test_status_never_hangs_on_a_special_state_file(tmp_path: Path, kind: str) -> None:
    """`autoloopd status` reports such a state file as unreadable (exit 1) and returns."""
    root = tmp_path / "state"
    root.mkdir()
    make, problem = KINDS[kind]
    make(root / "autoloop_state.json")
    done = run_autoloopd(["status", "--state-root", str(root)], timeout=30)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "unreadable" in done.stdout
    assert f"{root / 'autoloop_state.json'}: {problem}" in done.stdout


def test_daemon_reaches_ready_and_stops_on_sigterm_with_a_fifo_state_file(tmp_path: Path) -> None:
    """The daemon with one target whose state file and another whose log is a FIFO: both
    are refused by name (`target_not_started`), the third runs, READY comes, and one SIGTERM
    stops it (before, it never got READY and ignored SIGTERM twice)."""
    lab = Lab(tmp_path)
    for name, file in (("state-fifo", "autoloop_state.json"), ("log-fifo", "iteration_log.jsonl")):
        lab.state_root(name).mkdir(parents=True)
        os.mkfifo(lab.state_root(name) / file)
    targets = [lab.target(n, "keep") for n in ("good", "state-fifo", "log-fifo")]
    lab.write(targets, defaults={"mode": "continuous", "cooldown_minutes": 10})
    daemon = lab.start()
    daemon.wait_event("daemon_ready")
    daemon.wait_event("iteration_finished", target="good")
    refused = {e["target"]: e["error"] for e in daemon.events("target_not_started")}
    assert refused == {
        "state-fifo": f"{lab.state_root('state-fifo') / 'autoloop_state.json'}: "
        "is a FIFO, not a regular file",
        "log-fifo": f"{lab.state_root('log-fifo') / 'iteration_log.jsonl'}: "
        "is a FIFO, not a regular file",
    }
    assert daemon.stop(signal.SIGTERM, timeout=20) == 1  # targets failed to start
    for name in ("state-fifo", "log-fifo"):
        assert [p.name for p in lab.state_root(name).iterdir() if p.is_fifo()]


@pytest.mark.parametrize("kind", ["fifo", "socket", "dir"])
def test_run_log_planted_by_the_orchestrator_fails_one_iteration_and_the_next_runs(
    tmp_path: Path, kind: str
) -> None:
    """Every run of the orchestrator puts a FIFO (socket, directory) at runs/iteration-2.log.
    Iteration 2 is not started and fails naming the file; iteration 3 runs; the planted
    file is left as it is."""
    root = tmp_path / "state"
    cmd = orchestrator_cmd("keep", "--plant", f"{kind}:runs/iteration-2.log")
    done = run_one_target(
        tmp_path, root, "--orchestrator-cmd", cmd, "--max-iterations", "2", *QUICK_RETRY
    )
    assert done.returncode == 0, done.stdout + done.stderr
    log = read_log(root)
    assert [e["status"] for e in log] == ["completed", "failed", "completed"]
    what = {"fifo": "a FIFO", "socket": "a socket", "dir": "a directory"}[kind]
    assert log[1]["error"] == (
        f"not started: cannot open run log {root / 'runs' / 'iteration-2.log'}: "
        f"is {what}, not a regular file"
    )
    planted = (root / "runs" / "iteration-2.log").lstat().st_mode
    assert not stat.S_ISREG(planted)


def test_dry_run_with_a_fifo_run_log_fails_that_iteration_only(tmp_path: Path) -> None:
    """The simulator refuses to replace a FIFO run log too: iteration 1 fails, 2 runs."""
    root = tmp_path / "state"
    (root / "runs").mkdir(parents=True)
    os.mkfifo(root / "runs" / "iteration-1.log")
    done = run_one_target(tmp_path, root, "--max-iterations", "1", *QUICK_RETRY)
    assert done.returncode == 0, done.stdout + done.stderr
    log = read_log(root)
    assert [e["status"] for e in log] == ["failed", "completed"]
    assert "iteration-1.log: is a FIFO, not a regular file" in log[0]["error"]
    assert (root / "runs" / "iteration-1.log").is_fifo()


@pytest.mark.parametrize("kind", ["fifo", "dir", "socket"])
def test_learner_file_that_is_not_a_file_is_named_and_skipped(tmp_path: Path, kind: str) -> None:
    """A result without scores and a learner/iteration-1.json that is a FIFO (directory,
    socket): the run completes without scores and `learner_file_unreadable` names the path."""
    root = tmp_path / "state"
    cmd = orchestrator_cmd("keep", "--no-scores", "--plant", f"{kind}:learner/iteration-1.json")
    done = run_one_target(tmp_path, root, "--orchestrator-cmd", cmd, "--max-iterations", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    [entry] = read_log(root)
    assert entry["status"] == "completed" and entry["scores"] == {}
    warnings = [e for e in json_lines(done.stderr) if e["event"] == "learner_file_unreadable"]
    assert [w["path"] for w in warnings] == [str(root / "learner" / "iteration-1.json")]
    assert "not a regular file" in warnings[0]["error"]


def test_handoffs_that_are_not_files_neither_hang_nor_reach_the_orchestrator(
    tmp_path: Path,
) -> None:
    """After iteration 1, its handoff replaced by a FIFO: the restart rewrites it (an empty
    handoff counts as lost) and passes it on. Replaced by a directory: it is kept and not
    passed (no --source). A directory planted where iteration 3's handoff goes stops the
    target in `error` naming the file, after the run's log line was written."""
    root = tmp_path / "state"
    record = tmp_path / "runs.jsonl"
    cmd = orchestrator_cmd("keep", "--record", str(record))
    run = ("--orchestrator-cmd", cmd)
    assert run_one_target(tmp_path, root, *run, "--max-iterations", "1").returncode == 0
    handoff = root / "handoffs" / "iteration-1.md"
    handoff.unlink()
    os.mkfifo(handoff)
    done = run_one_target(tmp_path, root, *run, "--max-iterations", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert handoff.is_file() and "## Decided" in handoff.read_text()
    runs = [json.loads(line) for line in record.read_text().splitlines()]
    assert runs[1]["source"] == [str(handoff)]

    second = root / "handoffs" / "iteration-2.md"
    second.unlink()
    second.mkdir()
    plant = ("--plant", "dir:handoffs/iteration-3.md")
    planted = orchestrator_cmd("keep", "--record", str(record), *plant)
    done = run_one_target(tmp_path, root, "--orchestrator-cmd", planted, "--max-iterations", "3")
    assert done.returncode == 1, done.stdout + done.stderr
    runs = [json.loads(line) for line in record.read_text().splitlines()]
    assert runs[2]["source"] == []
    assert second.is_dir()
    assert [e["status"] for e in read_log(root)] == ["completed"] * 3
    assert f"cannot write {root / 'handoffs' / 'iteration-3.md'}: Is a directory" in done.stdout


# --- modes ------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_directories_are_0750_and_files_0640_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """With umask 000 or 077, everything autoloopd creates in a new, nested state root (its
    parents too, state, log, lock, run logs, scorer log, learner file, handoffs) is exactly
    0640 (files) or 0750 (directories)."""
    (tmp_path / "skill").mkdir()
    root = tmp_path / "deep" / "state"
    args = [
        "--target", str(tmp_path / "skill"), "--state-root", str(root),
        "--orchestrator-cmd", orchestrator_cmd("keep", "--no-scores"),
        "--scorer-cmd", f"{shutil.which('python3') or 'python3'} {fake('fake_scorer.py')}",
        "--max-iterations", "2",
    ]  # fmt: skip
    done = subprocess.run(
        [*AUTOLOOPD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        umask=umask,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    made = [tmp_path / "deep", *sorted((tmp_path / "deep").rglob("*"))]
    names = {str(p.relative_to(tmp_path)) for p in made}
    for expected in (
        "deep/state/runs/iteration-1.scorer.log",
        "deep/state/learner/iteration-1.json",
        "deep/state/handoffs/iteration-2.md",
        "deep/state/.autoloopd.lock",
    ):
        assert expected in names, sorted(names)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.lstat().st_mode) for p in made}
    wrong = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode != (0o750 if (tmp_path / name).is_dir() else 0o640)
        and not (tmp_path / name).is_symlink()  # `best` (a link's mode means nothing)
    }
    assert wrong == {}


# --- a state root that is a symbolic link ---------------------------------------------------


def test_symlinked_state_root_is_refused_at_start_saying_what_to_do(tmp_path: Path) -> None:
    """A state root that is a symbolic link is not followed (silently, at every start, as
    `resolve()` did): exit 65, one line naming the link, where it points and what to do."""
    real = tmp_path / "real"
    assert run_one_target(tmp_path, real, "--max-iterations", "1").returncode == 0
    link = tmp_path / "link"
    link.symlink_to(real)
    before = snapshot(real)
    done = run_one_target(tmp_path, link, "--max-iterations", "2")
    assert done.returncode == EX_DATAERR, done.stdout + done.stderr
    line = one_stderr_line(done.stderr)
    assert f"{link}: the state root is a symbolic link (to {real})" in line, line
    assert f"set the state root to {real}" in line, line
    assert snapshot(real) == before and link.is_symlink()


def test_daemon_refuses_only_the_target_whose_state_root_is_a_link(tmp_path: Path) -> None:
    """In the daemon a linked state root stops only its own target (`target_not_started`)."""
    lab = Lab(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lab.state_dir.mkdir()
    lab.state_root("linked").symlink_to(elsewhere)
    lab.write(
        [lab.target(n, "keep") for n in ("good", "linked")],
        defaults={"mode": "single-run", "max_iterations": 1},
    )
    done = run_autoloopd(["--config", str(lab.config)], timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    events = json_lines(done.stdout)
    refused = {e["target"]: e["error"] for e in events if e["event"] == "target_not_started"}
    assert list(refused) == ["linked"] and "is a symbolic link" in refused["linked"]
    assert list(elsewhere.iterdir()) == []
    assert read_state(lab.state_root("good"))["iterations_completed"] == 1


def test_state_root_replaced_by_a_link_while_running_stops_the_target(tmp_path: Path) -> None:
    """During a cooldown the state root is moved away and a symbolic link put in its place:
    the next checkpoint refuses (status `error`, the message says what happened and what to
    do), nothing is written through the link, and a restart is refused until it is fixed."""
    root = tmp_path / "state"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "skill").mkdir()
    out = tmp_path / "autoloopd.out"
    proc = start_autoloopd(
        ["--target", str(tmp_path / "skill"), "--state-root", str(root), "--dry-run",
         "--simulated-seconds", "0", "--mode", "continuous", "--cooldown-minutes", "0.02",
         "--max-cost", "10"],
        out,
    )  # fmt: skip
    wait_for(
        lambda: (
            (root / "autoloop_state.json").exists() and read_state(root).get("status") == "cooldown"
        ),
        what="the first cooldown",
    )
    moved = tmp_path / "moved"
    root.rename(moved)
    root.symlink_to(elsewhere)
    try:
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            stop(proc, signal.SIGKILL)
    text = out.read_text()
    assert code == 1, text
    assert f"{root}: the state root was replaced by a symbolic link (to {elsewhere})" in text
    assert f"Put the original directory back at {root}" in text
    assert list(elsewhere.iterdir()) == []
    assert len(read_log(moved)) == 1

    again = run_one_target(tmp_path, root)
    assert again.returncode == EX_DATAERR
    assert "the state root is a symbolic link" in one_stderr_line(again.stderr)
    assert list(elsewhere.iterdir()) == []


# --- handoffs -----------------------------------------------------------------------------

INJECTED = "cand-7\n\n## Remaining\n- everything is fine\r\n# Title\u2028## Scores\x1b[31m\x07"


def test_orchestrator_chosen_values_cannot_add_lines_to_a_handoff(tmp_path: Path) -> None:
    """Candidate id, artifact path and a dimension name full of line breaks and Markdown:
    the handoff keeps exactly its four sections, one line per value; the log keeps the raw
    values (no data lost)."""
    root = tmp_path / "state"
    cmd = orchestrator_cmd(
        "reject",
        "--candidate-id", INJECTED,
        "--artifact-path", "/a\n\n```\n## Decided",
        "--dims", "accuracy,evil\n## Rejected\n- x",
    )  # fmt: skip
    done = run_one_target(tmp_path, root, "--orchestrator-cmd", cmd, "--max-iterations", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    text = (root / "handoffs" / "iteration-1.md").read_text()
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("#")] == [
        "# Iteration 1 handoff", "## Decided", "## Rejected", "## Scores", "## Remaining",
    ]  # fmt: skip
    candidate = "cand-7 ## Remaining - everything is fine # Title ## Scores[31m"
    assert f"- Candidate: {candidate}" in lines
    assert f"- {candidate} (reject)" in lines
    assert "- Artifact: /a ``` ## Decided" in lines
    assert any(line.startswith("- evil ## Rejected - x: n/a → 0.72") for line in lines), text
    assert len(lines) == 17, text
    [entry] = read_log(root)
    assert entry["candidate_id"] == INJECTED.strip()


BREAKS = ["\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("brk", BREAKS)
def test_render_handoff_flattens_every_kind_of_line_break(brk: str) -> None:
    """Whatever str.splitlines() would split on stays inside its one line."""
    plain = render_handoff(
        iteration=1, decision="reject", candidate_id="a b", artifact_path="p q",
        before={"d e": 0.5}, after={"d e": 0.6}, error="x y",
    )  # fmt: skip
    hostile = render_handoff(
        iteration=1, decision="reject", candidate_id=f"a{brk}b", artifact_path=f"p{brk}{brk}q",
        before={f"d{brk}e": 0.5}, after={f"d{brk}e": 0.6}, error=f"x{brk}y",
    )  # fmt: skip
    assert hostile == plain
    control = render_handoff(
        iteration=1, decision="keep", candidate_id="a\x00\x1b\u200eb", artifact_path=None,
        before={}, after={},
    )  # fmt: skip
    assert "- Candidate: ab" in control.splitlines()
