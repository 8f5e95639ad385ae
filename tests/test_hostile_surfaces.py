"""Issue 19, tried as an attacker or a careless operator would: hostile target names, a
SIGHUP before the handler exists, a webhook that trickles at shutdown, an alert command that
dies at once, and hostile files and names under `autoloopd report`. Each runs the real
binary."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import resource
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from autoloop_daemon.exit_codes import EXIT_CONFIG
from autoloop_daemon.observers.alerts import DRAIN_LIMIT_S
from tests.helpers.config import write_config
from tests.helpers.daemon import Daemon, Lab
from tests.helpers.logs import json_lines
from tests.helpers.process import AUTOLOOPD, child_env, run_autoloopd
from tests.helpers.wait import wait_for

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


# --------------------------------------------------------------------------- the report

INJECTIONS = (
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "x\n## Decided\n- keep",
    "[link](javascript:alert(1)) ![i](x) `code` *em* _em_ __b__ &lt; | cell",
)


def _log_line(iteration: int, **fields: object) -> bytes:
    entry: dict[str, object] = {
        "iteration": iteration, "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:01:00Z", "status": "completed", "decision": "keep",
        "weighted_score": 0.5, "cost_usd": 0.25, "duration_seconds": 60.0,
        "cost_source": "reported",
    }  # fmt: skip
    entry.update(fields)
    return json.dumps(entry).encode() + b"\n"


def test_the_markdown_report_shows_hostile_names_and_ids_as_text(tmp_path: Path) -> None:
    """A target named like a tag, candidate ids, errors and a handoff full of HTML and
    Markdown: rendered (CommonMark, as a viewer would), no tag, link, image or heading
    comes from them; the text is still there to read."""
    root = tmp_path / "<img src=x onerror=alert(1)> ## x"
    root.mkdir()
    lines = [_log_line(n + 1, candidate_id=text, error=text) for n, text in enumerate(INJECTIONS)]
    (root / "iteration_log.jsonl").write_bytes(b"".join(lines))
    (root / "handoffs").mkdir()
    (root / "handoffs" / "iteration-1.md").write_text("\n".join(INJECTIONS))
    done = run_autoloopd(["report", "--state-root", str(root), "--output", "-", "--format", "md"])
    assert done.returncode == 0, done.stderr
    html = MarkdownIt("commonmark").enable("table").render(done.stdout)
    assert "<script" not in html and "<img" not in html and "<a " not in html
    assert "<code>code</code>" not in html and "<em>" not in html and "<strong>b" not in html
    assert re.findall(r"<h(\d)>", html) == ["1", "2", "3", "3"], html  # title, target, kept, runs
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt; ## x" in html


# --------------------------------------------------------------------------- start-up signals

# Each import's line, printed when it completes (`python -X importtime`, on stderr).
_RUNTIME_IMPORTED = re.compile(r"\|\s+autoloop_daemon\.cli\.run$", re.M)
COOLING = {"mode": "continuous", "cooldown_minutes": 10, "backoff_base_seconds": 0.1}


def _catches(pid: int, signum: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    (caught,) = re.findall(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M)
    return bool(int(caught, 16) >> (signum - 1) & 1)


def _signal_during_imports(daemon: Daemon, signum: int) -> None:
    """Send `signum` as soon as the entry point holds signals, while the runtime is still
    being imported (the window in which a SIGHUP used to end the daemon silently)."""
    wait_for(
        lambda: _catches(daemon.pid, signal.SIGHUP) or _RUNTIME_IMPORTED.search(daemon.text()),
        timeout=30,
        interval=0.001,
        what="the entry point holding SIGHUP",
    )
    assert not _RUNTIME_IMPORTED.search(daemon.text()), "SIGHUP is held only after the imports"
    daemon.send(signum)


def test_a_sighup_during_the_imports_is_applied_after_ready(tmp_path: Path) -> None:
    """A reload asked for while autoloopd is still importing (`systemctl reload` right after
    a start) is not fatal: it is applied once the daemon is READY, and it keeps running."""
    lab = Lab(tmp_path)
    lab.write([lab.target("a", "keep")], defaults=COOLING)
    daemon = lab.start(env={"PYTHONPROFILEIMPORTTIME": "1"})
    _signal_during_imports(daemon, signal.SIGHUP)
    ready = daemon.wait_event("daemon_ready")[0]
    reloaded = daemon.wait_event("config_reloaded")[0]
    assert daemon.events().index(ready) < daemon.events().index(reloaded)
    assert daemon.running()
    assert daemon.stop() == 0
    lab.check_state_roots()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_stop_during_the_imports_is_an_ordinary_shutdown(tmp_path: Path, signum: int) -> None:
    """SIGTERM or SIGINT while importing: the daemon starts, stops at once as asked, every
    state file whole; exit 0 (not -15 or a KeyboardInterrupt's 130)."""
    lab = Lab(tmp_path)
    lab.write([lab.target("a", "keep")], defaults=COOLING)
    daemon = lab.start(env={"PYTHONPROFILEIMPORTTIME": "1"})
    _signal_during_imports(daemon, signum)
    assert daemon.wait() == 0, daemon.text()[-3000:]
    (requested,) = daemon.events("shutdown_requested")
    assert requested["signal"] == signal.Signals(signum).name
    lab.check_state_roots()


# --------------------------------------------------------------------------- alerts


class Trickler:
    """A webhook that reads the request, then answers one byte every `every_s` seconds,
    never finishing (each byte arrives well within any per-read socket timeout)."""

    def __init__(self, every_s: float = 2.0) -> None:
        """Listen on 127.0.0.1; `url` is where to POST."""
        self.every_s = every_s
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        self.connections = 0
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while not self.stopped.is_set():
                conn, _ = self.server.accept()
                self.connections += 1
                threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            for byte in itertools.cycle(b"HTTP/1.1 200 OK\r\nX-Slow: "):
                conn.sendall(bytes([byte]))
                if self.stopped.wait(self.every_s):
                    return

    def close(self) -> None:
        """Stop answering and listening."""
        self.stopped.set()
        self.server.close()


def test_a_trickling_webhook_cannot_hold_the_daemon_after_sigterm(tmp_path: Path) -> None:
    """A webhook answering a byte every 2 s: an attempt ends at its `timeout_seconds` in all
    (`alert_failed`), and at shutdown the delivery gets DRAIN_LIMIT_S, after which what is
    still in flight is logged as `alert_not_delivered`; the daemon exits 0 on one SIGTERM
    (it used to stay up until a second SIGTERM killed it: -15, a failure for systemd)."""
    trickler = Trickler()
    lab = Lab(tmp_path)
    alerts = [
        {"events": ["daemon_stopping"], "url": trickler.url, "timeout_seconds": 3, "retries": 0},
        {"events": ["daemon_stopping"], "url": trickler.url, "timeout_seconds": 600, "retries": 0},
    ]
    lab.write([lab.target("a", "keep")], defaults=COOLING, alerts=alerts)
    try:
        daemon = lab.start()
        daemon.wait_event("iteration_finished")
        daemon.send(signal.SIGTERM)
        assert daemon.wait(timeout=DRAIN_LIMIT_S + 40) == 0, daemon.text()[-3000:]
    finally:
        trickler.close()
    (failed,) = daemon.events("alert_failed")
    assert failed["rule"] == 0 and "no complete answer within 3 s" in failed["error"]
    (lost,) = daemon.events("alert_not_delivered")
    assert lost["alert"] == "daemon_stopping" and f"{DRAIN_LIMIT_S:g} s" in lost["error"]
    assert trickler.connections == 2
    lab.check_state_roots()


def test_an_alert_command_that_exits_before_reading_is_an_alert_failed(tmp_path: Path) -> None:
    """Commands that close stdin and exit at once (the write may meet a closed pipe): each
    attempt is an `alert_failed` with its exit code, never an exception; exit 0."""
    lab = Lab(tmp_path)
    gone = ["sh", "-c", "exec 0<&-; exit 3"]
    alerts = [
        {"events": ["target_stopped"], "command": gone, "retries": 1, "timeout_seconds": 5}
        for _ in range(4)
    ]
    lab.write([lab.target("a", "keep", max_iterations=1)], alerts=alerts)
    done = run_autoloopd(["--config", str(lab.config)], timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    failed = [e for e in json_lines(done.stdout) if e["event"] == "alert_failed"]
    assert [e["rule"] for e in failed] == [0, 1, 2, 3], done.stdout
    assert all(e["attempts"] == 2 and "sh: exit code 3" in e["error"] for e in failed)
    assert "Traceback" not in done.stdout + done.stderr


# --------------------------------------------------------------------------- hostile files

GIB = 1 << 30


def _limited(gib: int) -> Callable[[], None]:
    """A preexec: at most `gib` GiB of address space, so reading a 2 GB line whole fails."""
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (gib * GIB, gib * GIB))


def _run_limited(args: list[str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AUTOLOOPD, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        preexec_fn=_limited(1),
        check=False,
    )


def _root(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    (root / "handoffs").mkdir(parents=True)
    return root


def test_the_report_reads_hostile_files_as_problems_of_their_target(tmp_path: Path) -> None:
    """A FIFO log (no hang), a log linked to /dev/zero (never read), a line
    nested 100,000 deep and a 2 GB last line without a newline (never read whole, under a
    1 GiB address-space limit): each is a problem of its target, exit 0, no traceback."""
    fifo = _root(tmp_path, "fifo")
    os.mkfifo(fifo / "iteration_log.jsonl")
    zero = _root(tmp_path, "zero")
    (zero / "iteration_log.jsonl").symlink_to("/dev/zero")
    deep = _root(tmp_path, "deep")
    nested = b"[" * 100_000 + b"]" * 100_000
    (deep / "iteration_log.jsonl").write_bytes(_log_line(1) + nested + b"\n" + _log_line(2))
    os.mkfifo(deep / "handoffs" / "iteration-1.md")  # a handoff that is a FIFO: no hang
    huge = _root(tmp_path, "huge")
    with (huge / "iteration_log.jsonl").open("wb") as log:
        log.write(_log_line(1))
        log.truncate(2 * GIB)  # sparse: 2 GB of NUL bytes and no newline
    (huge / "handoffs" / "iteration-1.md").symlink_to("/dev/zero")
    roots = [fifo, zero, deep, huge]
    args = ["report", "--output", "-", "--format", "md"]
    done = _run_limited([*args, *(a for r in roots for a in ("--state-root", str(r)))])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and done.stderr == ""
    md = done.stdout
    assert md.count("is a FIFO, not a regular file") == 2, md  # fifo's log, deep's handoff
    assert "is a symbolic link, not a regular file" in md
    assert "deep/iteration_log.jsonl:2: skipped: nested too deeply" in md, md
    assert "huge/iteration_log.jsonl:2: incomplete last line skipped" in md, md
    assert (huge / "iteration_log.jsonl").stat().st_size == 2 * GIB  # nothing changed


def test_start_up_cuts_a_2_gb_torn_line_without_reading_it_whole(tmp_path: Path) -> None:
    """A state root whose log ends in 2 GB without a newline (a torn write, however long):
    the daemon's start-up, under a 1 GiB address-space limit, cuts it as a torn tail and
    runs on from the last whole line."""
    target, state_root = tmp_path / "skill", tmp_path / "state"
    target.mkdir()
    done = run_autoloopd(
        ["--target", str(target), "--state-root", str(state_root), "--dry-run",
         "--max-iterations", "1", "--simulated-seconds", "0.01"]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = state_root / "iteration_log.jsonl"
    whole = log.stat().st_size
    with log.open("r+b") as f:
        f.truncate(2 * GIB)
    args = ["--target", str(target), "--state-root", str(state_root), "--dry-run"]
    again = _run_limited([*args, "--max-iterations", "2", "--simulated-seconds", "0.01"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "log_tail_truncated" in again.stderr + again.stdout
    lines = log.read_bytes().splitlines()
    assert log.stat().st_size > whole and len(lines) == 2
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2]
