"""The control channel end to end: a real `autoloopd --config`, its real unix socket, real
HTTP, and `autoloopd ctl` / `autoloopd status` as a user runs them."""

from __future__ import annotations

import errno
import http.client
import json
import os
import pwd
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoloop_daemon.control.client import request
from autoloop_daemon.exit_codes import (
    EXIT_CONFIG,
    EXIT_NOT_RUNNING,
    EXIT_REFUSED,
    EXIT_USAGE,
)
from tests.helpers.control import api, ctl, free_port, raw_get, target_status
from tests.helpers.daemon import Daemon, Lab, dry_target
from tests.helpers.notify import NotifyListener
from tests.helpers.process import run_autoloopd
from tests.helpers.wait import wait_for

SECRET = "sk-test-Zq8vW3secretvalue"


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    """A fresh lab under tmp_path."""
    return Lab(tmp_path)


def sock_of(lab: Lab) -> Path:
    """The default control socket of the lab's daemon."""
    return lab.state_dir / "autoloopd.sock"


def start(lab: Lab, **env: str) -> Daemon:
    """Start the lab's daemon and wait until it is ready and its socket listens."""
    daemon = lab.start(env=env or None)
    daemon.wait_event("daemon_ready")
    daemon.wait_event("control_socket_listening")
    return daemon


def finished(daemon: Daemon, target: str, count: int = 1) -> None:
    """Wait until `target` recorded `count` iterations."""
    daemon.wait_event("iteration_finished", count=count, target=target)


def test_ctl_verbs_steer_a_running_daemon(lab: Lab) -> None:
    """pause / resume / run-now / extend / stop / reset / budget / status each do what they
    say on a running daemon, with a clear line and exit 0; a command that does not apply
    exits 4, an unknown target exits 2 naming it. With `exit_when_idle = false` the daemon
    stays up after every target stopped, and `reset` starts one again."""
    lab.write(
        [dry_target(lab, "alpha"), dry_target(lab, "beta", max_iterations=2)],
        daemon={"exit_when_idle": False},
    )
    daemon = start(lab)
    sock = sock_of(lab)
    finished(daemon, "alpha")
    finished(daemon, "beta")

    done = ctl(lab.config, "pause", "alpha")
    assert (done.returncode, done.stdout.strip()) == (0, "alpha: paused"), done
    wait_for(lambda: target_status(sock, "alpha")["status"] == "paused", what="alpha paused")
    assert target_status(sock, "alpha")["paused"] is True
    refused = ctl(lab.config, "run-now", "alpha")
    assert refused.returncode == EXIT_REFUSED and "paused" in refused.stderr, refused

    assert ctl(lab.config, "run-now", "beta").returncode == 0
    finished(daemon, "beta", 2)  # beta skipped its ten-hour cooldown once
    wait_for(lambda: target_status(sock, "beta")["status"] == "stopped_max_iter", what="beta")
    assert ctl(lab.config, "pause", "beta").returncode == EXIT_REFUSED

    extended = ctl(lab.config, "extend", "beta", "--iterations", "+1", "--cost", "+2.5")
    assert extended.returncode == 0, extended
    assert "extended" in extended.stdout
    beta = wait_for(
        lambda: (b := target_status(sock, "beta"))["status"] == "cooldown" and b,
        what="beta running again after extend",
    )
    assert beta["max_iterations"] == 3 and beta["max_cost_usd"] == 52.5
    assert ctl(lab.config, "run-now", "beta").returncode == 0
    finished(daemon, "beta", 3)

    assert ctl(lab.config, "resume", "alpha").returncode == 0
    assert ctl(lab.config, "run-now", "alpha").returncode == 0
    finished(daemon, "alpha", 2)

    assert ctl(lab.config, "stop", "alpha").returncode == 0
    wait_for(lambda: target_status(sock, "alpha")["status"] == "stopped_operator", what="stop")
    assert ctl(lab.config, "stop", "alpha").returncode == EXIT_REFUSED  # already stopped
    assert ctl(lab.config, "reset", "alpha").returncode == 0
    wait_for(lambda: target_status(sock, "alpha")["phase"] == "cooldown", what="reset")

    unknown = ctl(lab.config, "pause", "gamma")
    assert unknown.returncode == EXIT_USAGE and "'gamma'" in unknown.stderr, unknown
    code, body = api(sock, "POST", "/api/targets/gamma/pause")
    assert code == 404 and body["target"] == "gamma" and "gamma" in body["error"]

    budget = ctl(lab.config, "budget")
    assert budget.returncode == 0
    money = json.loads(budget.stdout)
    assert set(money) == {"spent_usd", "reserved_usd", "cap_usd", "remaining_usd"}
    assert money["spent_usd"] > 0

    status = json.loads(ctl(lab.config, "status").stdout)
    assert status["daemon"]["running"] is True and status["daemon"]["pid"] == daemon.pid
    assert {t["target"] for t in status["targets"]} == {"alpha", "beta"}
    code, history = api(sock, "GET", "/api/targets/beta/history")
    assert code == 200 and [e["iteration"] for e in history["entries"]] == [1, 2, 3]
    assert daemon.stop() == 0, daemon.text()[-3000:]
    assert not sock.exists()  # removed on the way out
    lab.check_state_roots()


def test_pause_and_extension_survive_a_restart(lab: Lab) -> None:
    """A paused target stays paused after the daemon restarts (no iteration starts), and
    its extended limits are kept; `resume` lets it run again."""
    lab.write([dry_target(lab, "alpha", max_iterations=3)])
    daemon = start(lab)
    finished(daemon, "alpha")
    assert ctl(lab.config, "pause", "alpha").returncode == 0
    assert ctl(lab.config, "extend", "alpha", "--iterations", "2").returncode == 0
    wait_for(lambda: target_status(sock_of(lab), "alpha")["phase"] == "paused", what="paused")
    assert daemon.stop() == 0
    state = json.loads((lab.state_root("alpha") / "autoloop_state.json").read_text())
    assert state["paused"] is True and state["extra_iterations"] == 2
    assert state["status"] == "stopped_signal"

    again = start(lab)
    row = wait_for(
        lambda: (r := target_status(sock_of(lab), "alpha"))["phase"] == "paused" and r,
        what="paused after the restart",
    )
    assert row["paused"] is True and row["max_iterations"] == 5
    assert row["status"] == "paused"
    assert again.count("iteration_started") == 0
    assert ctl(lab.config, "resume", "alpha").returncode == 0
    assert ctl(lab.config, "run-now", "alpha").returncode == 0
    finished(again, "alpha")
    assert again.stop() == 0
    final = json.loads((lab.state_root("alpha") / "autoloop_state.json").read_text())
    assert final["iterations_completed"] == 2 and final["paused"] is False
    assert final["extra_iterations"] == 2


def test_reload_through_ctl_applies_a_good_file_and_refuses_a_bad_one(lab: Lab) -> None:
    """`ctl reload` validates first: a good file is applied (a new target starts); a bad one
    exits 78 naming the key, and the daemon keeps running with the previous configuration."""
    lab.write([dry_target(lab, "alpha")])
    daemon = start(lab)
    lab.write([dry_target(lab, "alpha"), dry_target(lab, "beta")])
    done = ctl(lab.config, "reload")
    assert done.returncode == 0 and "added beta" in done.stdout, done
    finished(daemon, "beta")
    lab.config.write_text(lab.config.read_text() + "\n[daemon.oops]\nmax_concurent = 3\n")
    bad = ctl(lab.config, "reload")  # ctl reads the file first: refused before the daemon
    assert bad.returncode == EXIT_CONFIG, bad
    assert "daemon.oops" in bad.stderr and len(bad.stderr.splitlines()) == 1, bad.stderr
    sent = run_autoloopd(["ctl", "--socket", str(sock_of(lab)), "reload"])  # the daemon's check
    assert sent.returncode == EXIT_CONFIG, sent
    assert "reload refused" in sent.stderr and "daemon.oops" in sent.stderr, sent.stderr
    daemon.wait_event("reload_failed")
    assert daemon.running()
    status = run_autoloopd(["ctl", "--socket", str(sock_of(lab)), "status"])
    assert {t["target"] for t in json.loads(status.stdout)["targets"]} == {"alpha", "beta"}
    assert daemon.stop() == 0


def test_status_without_a_daemon_exits_3_and_still_lists_every_target(lab: Lab) -> None:
    """With no daemon, `status` says so, exits 3 (as `systemctl status`) and shows each
    target's last known state from its files; `ctl` exits 3 with a clear message."""
    lab.write(
        [dry_target(lab, "alpha", mode="single-run", max_iterations=1), dry_target(lab, "beta")]
    )
    done = run_autoloopd(["status", "--config", str(lab.config)], timeout=30)
    assert done.returncode == EXIT_NOT_RUNNING, done
    assert "daemon: not running" in done.stdout
    daemon = lab.start()
    daemon.wait_event("target_stopped", target="alpha")
    assert daemon.stop() == 0
    as_json = run_autoloopd(["status", "--config", str(lab.config), "--json"], timeout=30)
    assert as_json.returncode == EXIT_NOT_RUNNING
    report = json.loads(as_json.stdout)
    assert report["daemon"]["running"] is False and report["daemon"]["source"] == "files"
    rows = {r["target"]: r for r in report["targets"]}
    assert rows["alpha"]["status"] == "stopped_max_iter"
    assert rows["alpha"]["reason"] == "max_iterations reached (1/1)"
    # stopped while cooling its wait is left as stored (issue 24), else stopped_signal
    assert rows["beta"]["status"] in ("cooldown", "stopped_signal")
    assert report["budget"]["cap_usd"] == 100.0
    assert report["budget"]["spent_usd"] == pytest.approx(
        sum(r["total_cost_usd"] for r in rows.values())
    )
    table = run_autoloopd(["status", "--config", str(lab.config)], timeout=30)
    assert "max_iterations reached (1/1)" in table.stdout
    no_daemon = ctl(lab.config, "status")
    assert no_daemon.returncode == EXIT_NOT_RUNNING
    assert "not running" in no_daemon.stderr


def test_no_secret_reaches_any_response_or_log(lab: Lab) -> None:
    """A target's env value (an API key) appears in no API response, page, metric or log."""
    lab.write([dry_target(lab, "alpha", env={"API_KEY": SECRET})])
    daemon = start(lab)
    finished(daemon, "alpha")
    sock = sock_of(lab)
    bodies = []
    for url in ("/api/status", "/api/budget", "/api/targets/alpha/history", "/metrics", "/"):
        conn_status, body = raw_get(sock, url)
        assert conn_status == 200, (url, body)
        bodies.append(body)
    code, _ = api(sock, "POST", "/api/targets/alpha/pause")
    assert code == 200
    lab.config.write_text(lab.config.read_text() + "\n[daemon.oops]\nx = 1\n")
    assert ctl(lab.config, "reload").returncode == EXIT_CONFIG
    assert daemon.stop() == 0
    bodies.append(daemon.text())
    bodies.append(run_autoloopd(["status", "--config", str(lab.config), "--json"]).stdout)
    for body in bodies:
        assert SECRET not in body


def test_metrics_parse_with_the_expected_samples(lab: Lab) -> None:
    """`GET /metrics` is valid Prometheus text with iterations by target/status/decision,
    cost by source, budget, one-hot target status, scores, durations and readiness."""
    lab.write(
        [dry_target(lab, "alpha"), dry_target(lab, "beta", mode="single-run", max_iterations=1)]
    )
    daemon = start(lab)
    finished(daemon, "alpha")
    daemon.wait_event("target_stopped", target="beta")
    code, text = raw_get(sock_of(lab), "/metrics")
    assert code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    names = {name for name, _ in samples}
    assert {
        "autoloopd_iterations_total",
        "autoloopd_cost_usd_total",
        "autoloopd_budget_spent_usd",
        "autoloopd_budget_remaining_usd",
        "autoloopd_target_status",
        "autoloopd_target_best_weighted_score",
        "autoloopd_target_last_weighted_score",
        "autoloopd_iteration_duration_seconds_count",
        "autoloopd_iterations_running",
        "autoloopd_iterations_queued",
        "autoloopd_ready",
    } <= names
    iterations = {
        dict(labels)["target"]: value
        for (name, labels), value in samples.items()
        if name == "autoloopd_iterations_total"
    }
    assert iterations == {"alpha": 1.0, "beta": 1.0}
    assert samples[("autoloopd_target_status", (("status", "stopped_max_iter"),
                    ("target", "beta")))] == 1.0  # fmt: skip
    assert samples[("autoloopd_target_status", (("status", "cooldown"), ("target", "beta")))] == 0
    assert samples[("autoloopd_ready", ())] == 1.0
    spent = samples[("autoloopd_budget_spent_usd", ())]
    assert spent == pytest.approx(sum(
        v for (n, _), v in samples.items() if n == "autoloopd_cost_usd_total"
    ))  # fmt: skip
    assert daemon.stop() == 0


def _connect_as(uid: int, gid: int, sock: Path) -> int:
    """Connect to `sock` from a child running as uid/gid; the errno (0: connected)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(sock))
        except OSError as exc:
            code = exc.errno or 255
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_the_socket_is_0660_and_the_kernel_refuses_other_users(lab: Lab, tmp_path: Path) -> None:
    """The socket is created mode 0660; a user outside its owner and group (`nobody`) is
    refused by the kernel when connecting."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")
    public = Path("/tmp") / f"autoloopd-perm-{os.getpid()}-{tmp_path.name}"
    public.mkdir(mode=0o755)
    public.chmod(0o755)  # others may traverse: only the socket's own mode stands in the way
    sock = public / "ctl.sock"
    try:
        lab.write([dry_target(lab, "alpha")], daemon={"control_socket": str(sock)})
        daemon = start(lab)
        mode = sock.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
        assert sock.stat().st_gid == os.getegid()
        # A forked child drops to `nobody` and connects (no interpreter path to exec).
        assert _connect_as(nobody.pw_uid, nobody.pw_gid, sock) == errno.EACCES
        assert request(sock, "GET", "/api/budget")[0] == 200  # root (the owner) gets in
        assert daemon.stop() == 0
        assert not sock.exists()
    finally:
        for leftover in public.iterdir():
            leftover.unlink()
        public.rmdir()


def _http(port: int, url: str, token: str | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        conn.request("GET", url, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_tcp_listener_needs_a_token_off_loopback_and_then_requires_it(lab: Lab) -> None:
    """`http_listen` on a non-loopback address without `http_token_file` is a config error
    (exit 78 naming the key); with a token every request needs `Authorization: Bearer`."""
    lab.write([dry_target(lab, "alpha")], daemon={"http_listen": "0.0.0.0:8765"})
    refused = run_autoloopd(["--config", str(lab.config), "--check"])
    assert refused.returncode == EXIT_CONFIG, refused
    assert "daemon.http_listen" in refused.stderr and "token" in refused.stderr

    token_file = lab.root / "token"
    token_file.write_text("s3cret-token\n")
    port = free_port()
    lab.write(
        [dry_target(lab, "alpha")],
        daemon={"http_listen": f"127.0.0.1:{port}", "http_token_file": str(token_file)},
    )
    daemon = start(lab)
    daemon.wait_event("http_listening")
    assert _http(port, "/api/budget")[0] == 401
    assert _http(port, "/api/budget", "wrong")[0] == 401
    code, body = _http(port, "/api/status", "s3cret-token")
    assert code == 200 and body["daemon"]["pid"] == daemon.pid
    assert api(sock_of(lab), "GET", "/api/budget")[0] == 200  # the unix socket needs none
    assert daemon.stop() == 0


def test_under_systemd_the_daemon_stays_up_when_every_target_stopped(lab: Lab) -> None:
    """With NOTIFY_SOCKET set and `exit_when_idle = "auto"`, the daemon stays up once every
    target stopped (STATUS=all targets stopped), `extend` starts one again, SIGTERM ends it;
    with `exit_when_idle = true` it exits as soon as the targets are done."""
    single = {"mode": "single-run", "max_iterations": 1}
    lab.write([dry_target(lab, "alpha", **single)])
    with NotifyListener(lab.root) as listener:
        daemon = lab.start(env=listener.env)
        daemon.wait_event("target_stopped", target="alpha")
        listener.wait_for(
            lambda m: any((n.get("STATUS") or "").startswith("all targets stopped") for n in m),
            what="STATUS=all targets stopped",
        )
        assert daemon.running()
        assert ctl(lab.config, "extend", "alpha", "--iterations", "1").returncode == 0
        daemon.wait_event("target_stopped", count=2, target="alpha")
        assert daemon.running()
        assert daemon.stop() == 0
        state = json.loads((lab.state_root("alpha") / "autoloop_state.json").read_text())
        assert state["iterations_completed"] == 2

        lab.write([dry_target(lab, "alpha", **single)], daemon={"exit_when_idle": True})
        again = lab.start(env=listener.env)
        assert again.wait() == 0  # on its own, once alpha (already at its limit) stopped


def test_on_the_journal_each_line_starts_with_its_syslog_priority(lab: Lab) -> None:
    """With JOURNAL_STREAM naming its stdout, every JSON line starts with `<N>`: info `<6>`,
    a failed iteration `<4>`, the circuit breaker's `target_stopped` `<3>`."""
    bad = lab.target("bad", "crash", mode="single-run", max_consecutive_errors=1)
    lab.write([bad, dry_target(lab, "good", mode="single-run", max_iterations=1)])
    out = lab.root / "journal.out"
    out.touch()  # the daemon's stdout: the same inode once opened for writing
    st = out.stat()
    daemon = Daemon(lab.config, out, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert daemon.wait() == 1
    lines = [line for line in out.read_text().splitlines() if line]
    assert lines and all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
    by_event = {json.loads(line[3:])["event"]: line[:3] for line in lines}
    assert by_event["daemon_ready"] == "<6>"
    assert by_event["iteration_finished"] in ("<4>", "<6>")
    stopped = [line for line in lines if '"target_stopped"' in line and '"bad"' in line]
    assert stopped and stopped[0].startswith("<3>"), stopped
    failed = [line for line in lines if '"iteration_finished"' in line and '"bad"' in line]
    assert failed and failed[0].startswith("<4>"), failed

    plain = lab.root / "plain.out"
    again = Daemon(lab.config, plain, env={"JOURNAL_STREAM": "1:2"})  # not its stdout
    again.wait()
    assert all(line.startswith("{") for line in plain.read_text().splitlines() if line)


def test_dashboard_files_are_served_and_nothing_beside_them(lab: Lab) -> None:
    """`GET /` serves the packaged index.html; `/static/` serves only files of that
    directory (a path leading out of it, or a missing file, is a JSON 404)."""
    lab.write([dry_target(lab, "alpha")])
    daemon = start(lab)
    code, page = raw_get(sock_of(lab), "/")
    assert code == 200 and "<html" in page.lower()
    assert raw_get(sock_of(lab), "/static/index.html") == (code, page)
    for url in ("/static/../control.py", "/static/..%2F..%2Fexit_codes.py", "/static/nope.js"):
        status, body = raw_get(sock_of(lab), url)
        assert status == 404, (url, body)
        assert "EXIT_" not in body and "import" not in body
    assert daemon.stop() == 0
