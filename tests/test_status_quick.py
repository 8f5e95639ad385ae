"""`autoloopd status` and `ctl` find the daemon's socket fast, and print what they printed.

Pinned down: the shortcut gives the socket `load_config` would (default under state_dir, or
`control_socket` relative to the config file), and gives up (None: the whole config is read)
whenever it could differ: an AUTOLOOPD_DAEMON__* override, a `daemon` table written as
dotted keys, a table that does not validate (every table it accepts validates, with the
same socket). Asking a daemon imports neither pydantic, structlog, anyio nor the runtime,
and the fast JSON text is byte for byte `json.dumps(indent=2)`.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import urllib.parse
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from autoloop_daemon.cli import status as status_mod
from autoloop_daemon.config import settings
from autoloop_daemon.config.loader import load_config
from autoloop_daemon.control.quick_socket import (
    DAEMON_CHECKS,
    DEFAULT_STATE_DIR,
    ENV_PREFIX,
    quick_socket,
)
from autoloop_daemon.control.settings import socket_path
from autoloop_daemon.exceptions import ConfigError
from autoloop_daemon.json_text import dumps_indented
from autoloop_daemon.status_report import state_root_of

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
        '[daemon]\nstate_dir = "st"\nmax_concurrent_iterations = 32\nshutdown_grace_seconds = 30'
        '\nlog_format = "json"\nlog_level = "info"\nexit_when_idle = false\n',
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


VALUES = {
    "state_dir": ['"st"', '""', '"  "', "1", '"a\\u0000b"'],
    "max_concurrent_iterations": ["1", "10000", "0", "10001", "2.0", "true", '"4"'],
    "shutdown_grace_seconds": ["0", "2.5", "-1", "31536001", "nan", "inf", "true", '"3"'],
    "log_format": ['"json"', '"console"', '"auto"', '"xml"', "1"],
    "log_level": ['"debug"', '"error"', '"trace"', "true"],
    "control_socket": ['"run/c.sock"', '""', "3"],
    "http_listen": ['"127.0.0.1:8765"', "8765"],
    "http_token_file": ['"token"', "5"],
    "exit_when_idle": ["true", "false", '"auto"', '"yes"', "1"],
}
CASES = [(key, value) for key, values in VALUES.items() for value in values]


@pytest.mark.parametrize(("key", "value"), CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_every_table_the_shortcut_accepts_validates_with_the_same_socket(
    tmp_path: Path, key: str, value: str
) -> None:
    """The shortcut's checks are never looser than the schema's (it may give up more often)."""
    if key == "http_token_file":
        (tmp_path / "token").write_text("secret-token\n", encoding="utf-8")
    state_dir = "" if key == "state_dir" else 'state_dir = "st"\n'
    path = _config(tmp_path, f"[daemon]\n{state_dir}{key} = {value}\n")
    quick = quick_socket(path, {})
    try:
        full = socket_path(load_config(path, environ={}))
    except ConfigError:
        assert quick is None
    else:
        assert quick in (None, full)


def test_the_shortcut_knows_every_key_and_default_of_the_schema() -> None:
    assert set(DAEMON_CHECKS) == set(settings.DaemonSettings.model_fields)
    assert settings.DaemonSettings().state_dir == DEFAULT_STATE_DIR
    assert settings.ENV_PREFIX == ENV_PREFIX


def _random_value(rng: random.Random, depth: int) -> Any:
    scalars = [None, True, False, 0, -7, 10**20, 0.1, 1e-9, float("nan"), float("inf"), "",
               "é\n\"}", "},\n  {", "\u2028"]  # fmt: skip
    kind = rng.randrange(4 if depth < 3 else 1)
    if kind == 0:
        return rng.choice(scalars)
    if kind == 1:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 2:
        return {f"k{i}": _random_value(rng, depth + 1) for i in range(rng.randrange(4))}
    return [{"a": rng.choice(scalars), "}": 1} for _ in range(rng.randrange(1, 4))]


def test_the_fast_json_text_is_that_of_json_dumps_indent_2() -> None:
    rng = random.Random(14)
    samples: list[Any] = [_random_value(rng, 0) for _ in range(500)]
    samples += [{1: 2, "a": {2: [1, {}]}}, ("t", (1, [])), [{"a": 1}, {}], [{"a": [1]}]]
    for sample in samples:
        assert dumps_indented(sample) == json.dumps(sample, indent=2)


STATUS_PAYLOAD = {
    "daemon": {"running": True, "pid": 1, "started_at": "2026-01-01T00:00:00Z",
               "uptime_s": 1.0, "ready": True, "shutting_down": False},
    "budget": {"spent_usd": 0.5, "reserved_usd": 0.0, "cap_usd": 10.0, "remaining_usd": 9.5},
    "targets": [{"target": "a", "status": "cooldown", "phase": "cooldown",
                 "iterations_completed": 1, "state_location": "/s/a/autoloop_state.json"}],
}  # fmt: skip

# A fake daemon on the config's socket (stdlib HTTP in a thread), then `autoloopd status`.
# It answers `/api/status/report` with argv[4] (`@FILE`: that file's bytes; when empty 404,
# as a daemon older than that route) and every other GET with argv[3]; argv[5:] are
# status' options. It prints the exit code, the heavy modules imported and the paths asked
# on stderr.
SCRIPT = """
import json, socketserver, sys, threading
from http.server import BaseHTTPRequestHandler
sock, config, payload = sys.argv[1], sys.argv[2], sys.argv[3].encode()
report = sys.argv[4].encode()
if sys.argv[4].startswith("@"):  # a long answer, from that file
    report = open(sys.argv[4][1:], "rb").read()
asked = []
class Answer(BaseHTTPRequestHandler):
    def do_GET(self):
        asked.append(self.path)
        code, body = 200, payload
        if self.path.startswith("/api/status/report"):
            code, body = (200, report) if report else (404, b'{"error": "no such route"}')
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def address_string(self):
        return "unix"
    def log_message(self, *args):
        pass
server = socketserver.UnixStreamServer(sock, Answer)
threading.Thread(target=server.serve_forever, daemon=True).start()
from autoloop_daemon.cli.main import main
code = main(["status", "--config", config, *sys.argv[5:]])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in
               ("pydantic", "pydantic_settings", "structlog", "anyio", "starlette", "hypercorn")
               or m.startswith(("autoloop_daemon.runtime", "autoloop_daemon.config.settings")))
report_made_here = sorted(m for m in sys.modules if m in
                          ("autoloop_daemon.status_text", "autoloop_daemon.status_report",
                           "autoloop_daemon.cli.status_reviews"))
print(json.dumps({"code": code, "heavy": heavy, "asked": asked, "report": report_made_here}),
      file=sys.stderr)
"""


def test_status_from_a_daemon_imports_nothing_heavy_and_prints_the_same_json(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "st" / "autoloopd.sock"
    sock.parent.mkdir()
    config = _config(tmp_path, '[daemon]\nstate_dir = "st"\n')
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(sock), str(config), json.dumps(STATUS_PAYLOAD),
         "", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    outcome = json.loads(done.stderr.strip().splitlines()[-1])
    assert outcome["code"] == 0 and outcome["heavy"] == []
    assert "autoloop_daemon.status_report" in outcome["report"]  # built here, from /api/status
    row = dict.fromkeys(
        ("target", "status", "paused", "reason", "last_error", "iterations_completed",
         "max_iterations", "running_iteration", "running_for_s", "in_flight",
         "best_weighted_score", "last_weighted_score", "last_decision", "total_cost_usd",
         "max_cost_usd", "estimated", "next_run_at", "consecutive_errors", "state_root",
         "host")
    )  # fmt: skip
    row.update(target="a", status="cooldown", iterations_completed=1, state_root="/s/a")
    row.update(pending_reviews=0, review_problem=None)  # this fake answers no review queue
    expected = {
        "daemon": {**STATUS_PAYLOAD["daemon"], "source": "socket", "control_socket": str(sock)},
        "budget": STATUS_PAYLOAD["budget"],
        "targets": [row],
        "reviews_pending": 0,
    }
    assert done.stdout == json.dumps(expected, indent=2) + "\n"
    assert [p.split("?")[0] for p in outcome["asked"]] == [
        "/api/status/report", "/api/status", "/api/reviews"
    ]  # fmt: skip


@pytest.mark.parametrize("options", [[], ["--json"], ["--all"]])
def test_status_prints_the_daemons_report_as_it_came_in_one_request(
    tmp_path: Path, options: list[str]
) -> None:
    sock = tmp_path / "st" / "autoloopd.sock"
    sock.parent.mkdir()
    config = _config(tmp_path, '[daemon]\nstate_dir = "st"\n')
    made = 'not JSON, printed as it came: {"a": 1}\n\u00e9\n'  # never parsed
    zone = "America/New_York"  # the terminal's zone: the daemon renders the text's times in it
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(sock), str(config), "{}", made, *options],
        capture_output=True, timeout=60, check=False, env={**os.environ, "TZ": zone},
    )  # fmt: skip
    outcome = json.loads(done.stderr.decode().strip().splitlines()[-1])
    assert outcome["code"] == 0 and outcome["heavy"] == []
    assert outcome["report"] == []  # printed as it came: the report's modules stay unloaded
    assert done.stdout == made.encode()
    [path] = outcome["asked"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    assert query == {
        "form": ["json" if "--json" in options else "text"],
        "all": ["1" if "--all" in options else "0"],
        "socket": [str(sock)],
        "utc_offset": [str(_offset_now(zone))],  # for a daemon that does not know the name
        "tz": [zone],
    }


def _offset_now(zone: str) -> int:
    offset = datetime.now(ZoneInfo(zone)).utcoffset()
    assert offset is not None
    return int(offset.total_seconds())


@pytest.mark.parametrize(
    ("tz", "sent"),
    [(":Europe/Berlin", "Europe/Berlin"), ("UTC", "UTC"), ("NPT-5:45", None), ("", None),
     ("../etc/passwd", None)],
)  # fmt: skip
def test_status_names_its_zone_when_tz_is_a_zone_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tz: str, sent: str | None
) -> None:
    """`TZ` names the zone sent (a POSIX rule or anything else sends only the offset)."""
    monkeypatch.setenv("TZ", tz)
    assert status_mod._zone_key() == sent


@pytest.mark.parametrize(
    "location",
    ["/a/b/autoloop_state.json", "/a/b", ".json", "/.json", "/a/.json", "/a/..json", "/x.json",
     "/", "//a/b.json", "/a//b.json", "/a/./b.json", "/a/b/", "/a/b/.", "a/b.json", "", None,
     "/a/b.JSON", "/a/b.json/", "/a/../b.json", "/a/b.json.bak", "/é/ü.json"],
)  # fmt: skip
def test_a_rows_state_root_is_what_path_says(location: str | None) -> None:
    path = Path(location or ".")
    assert state_root_of(location) == str(path.parent if path.suffix == ".json" else path)


def test_a_reader_that_goes_away_ends_status_quietly_with_141(tmp_path: Path) -> None:
    """`autoloopd status --all | head -1`: the pipe closes under a long answer; status exits
    141 (128 + SIGPIPE, as a shell reports it) without a traceback."""
    sock = tmp_path / "st" / "autoloopd.sock"
    sock.parent.mkdir()
    config = _config(tmp_path, '[daemon]\nstate_dir = "st"\n')
    long = tmp_path / "answer.txt"  # 1.3 MB, far over a pipe's buffer
    long.write_text("".join(f"row {i}\n" for i in range(200_000)))
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(sock), str(config), "{}", f"@{long}", "--all"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"row 0\n"
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0  # the script itself ends normally...
    outcome = json.loads(err.strip().splitlines()[-1])
    assert outcome["code"] == 141  # ...having had 141 from status
    assert "Traceback" not in err and "Exception ignored" not in err, err
