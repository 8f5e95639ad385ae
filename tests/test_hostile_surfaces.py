"""Issue 19, tried as an attacker or a careless operator would: hostile target names, a
SIGHUP before the handler exists, a webhook that trickles at shutdown, an alert command that
dies at once, and hostile files and names under `autoloopd report`. Each runs the real
binary."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from autoloop_daemon.exit_codes import EXIT_CONFIG
from tests.helpers.config import write_config
from tests.helpers.daemon import Daemon, Lab
from tests.helpers.process import run_autoloopd
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
