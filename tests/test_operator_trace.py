"""The operator is told the truth, end to end on a real daemon and its real sockets: every
command leaves a trace (journal event, the state's last action, `/metrics`), a command that
does not take says so and exits 4, and an operator's stop is `stopped_operator`, not a
signal."""

from __future__ import annotations

import http.client
import json
import os
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoloop_daemon.exit_codes import EXIT_REFUSED
from tests.helpers.control import api, ctl, free_port, raw_get, target_status
from tests.helpers.daemon import Daemon, Lab, dry_target
from tests.helpers.process import run_autoloopd
from tests.helpers.wait import wait_for


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    """A fresh lab under tmp_path."""
    return Lab(tmp_path)


def start(lab: Lab) -> Daemon:
    """The lab's daemon, ready, its socket listening, the first iteration of each target done."""
    daemon = lab.start()
    daemon.wait_event("daemon_ready")
    daemon.wait_event("control_socket_listening")
    return daemon


def commands_metric(sock: Path) -> dict[tuple[str, str], float]:
    """`autoloopd_operator_commands_total` by (verb, outcome)."""
    code, text = raw_get(sock, "/metrics")
    assert code == 200
    return {
        (s.labels["verb"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "autoloopd_operator_commands"
        for s in family.samples
        if s.name == "autoloopd_operator_commands_total"
    }


def test_every_command_leaves_a_trace_and_one_that_does_not_take_says_so(lab: Lab) -> None:
    """pause, pause again (refused: "already paused", exit 4), resume, resume again, run-now,
    extend (and a bad extend), stop: one `operator_command` journal event each, naming verb,
    target, values, origin (the unix socket, with the peer's uid) and outcome; `/metrics`
    counts them by verb and outcome; the state keeps the last one; the stop is
    `stopped_operator` with "stopped by operator (uid N) at T"."""
    lab.write([dry_target(lab, "alpha")], daemon={"exit_when_idle": False})
    daemon = start(lab)
    sock = lab.state_dir / "autoloopd.sock"
    daemon.wait_event("iteration_finished", target="alpha")
    uid = os.getuid()

    assert ctl(lab.config, "pause", "alpha").stdout.strip() == "alpha: paused"
    again = ctl(lab.config, "pause", "alpha")
    assert again.returncode == EXIT_REFUSED and "alpha: already paused" in again.stderr, again
    assert ctl(lab.config, "resume", "alpha").returncode == 0
    twice = ctl(lab.config, "resume", "alpha")
    assert twice.returncode == EXIT_REFUSED and "not paused" in twice.stderr, twice
    assert ctl(lab.config, "extend", "alpha", "--iterations", "+2").returncode == 0
    code, _ = api(sock, "POST", "/api/targets/alpha/extend", {"iterations": "lots"})
    assert code == 400
    stopped = ctl(lab.config, "stop", "alpha")
    assert stopped.returncode == 0, stopped
    row = wait_for(
        lambda: (r := target_status(sock, "alpha"))["status"] == "stopped_operator" and r,
        what="alpha stopped by the operator",
    )
    reason = row["reason"]
    assert re.fullmatch(rf"stopped by operator \(uid {uid}\) at \d{{4}}-\d\d-\d\dT\S+", reason)

    traces = daemon.wait_event("operator_command", count=7)
    seen = [(e["verb"], e["outcome"]) for e in traces]
    assert seen == [
        ("pause", "ok"),
        ("pause", "refused"),
        ("resume", "ok"),
        ("resume", "refused"),
        ("extend", "ok"),
        ("extend", "bad_request"),
        ("stop", "ok"),
    ]
    for event in traces:
        assert event["target"] == "alpha" and event["origin"] == "socket", event
        assert event["uid"] == uid and event["at"] and event["message"], event
    assert traces[4]["values"] == {"iterations": 2, "cost_usd": 0.0}
    assert traces[1]["level"] == "warning"  # a command that did not take
    stop_events = daemon.events("target_stopped", target="alpha")
    assert [e["reason"] for e in stop_events] == [reason]
    assert "signal" not in daemon.text().split("operator_command")[-1]

    counts = commands_metric(sock)
    assert counts[("pause", "ok")] == 1 and counts[("pause", "refused")] == 1
    assert counts[("extend", "bad_request")] == 1 and counts[("stop", "ok")] == 1

    assert daemon.stop() == 0
    state = json.loads((lab.state_root("alpha") / "autoloop_state.json").read_text())
    assert state["schema_version"] == "1.0" and state["status"] == "stopped_operator"
    kept = state["last_operator_action"]
    assert (kept["verb"], kept["outcome"], kept["origin"], kept["uid"]) == (
        "stop",
        "ok",
        "socket",
        uid,
    )
    shown = run_autoloopd(["status", "--config", str(lab.config)])  # no daemon: the files
    assert f"stopped by operator (uid {uid})" in shown.stdout, shown
    header = next(line for line in shown.stdout.splitlines() if line.startswith("TARGET"))
    row_line = next(line for line in shown.stdout.splitlines() if line.startswith("alpha "))
    column = header.index("NEXT RUN")
    assert row_line[column:].split()[0] == "-", shown.stdout  # no next run once stopped


def test_a_command_over_tcp_names_the_peer_address(lab: Lab) -> None:
    """Over the loopback TCP listener the trace's origin is `tcp` with the peer's address."""
    port = free_port()
    lab.write([dry_target(lab, "alpha")], daemon={"http_listen": f"127.0.0.1:{port}"})
    daemon = start(lab)
    daemon.wait_event("http_listening")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/api/targets/alpha/pause", body=b"")
        response = conn.getresponse()
        assert response.status == 200, response.read()
    finally:
        conn.close()
    (event,) = daemon.wait_event("operator_command")
    assert (event["verb"], event["origin"], event["uid"]) == ("pause", "tcp", None)
    assert event["address"].startswith("127.0.0.1:")
    assert daemon.stop() == 0


def test_a_restart_whose_limit_still_holds_says_it_did_not_take(lab: Lab) -> None:
    """`ctl reset` of a target stopped by max_iterations: it starts, stops again at once, and
    ctl says so ("started, then stopped again: max_iterations reached (1/1)", exit 4); an
    `extend` that lifts the limit starts it for real (exit 0, one more iteration)."""
    alpha = dry_target(lab, "alpha", max_iterations=1, cooldown_minutes=0)
    lab.write([alpha], daemon={"exit_when_idle": False})
    daemon = start(lab)
    sock = lab.state_dir / "autoloopd.sock"
    wait_for(lambda: target_status(sock, "alpha")["status"] == "stopped_max_iter", what="stop")
    reset = ctl(lab.config, "reset", "alpha")
    assert reset.returncode == EXIT_REFUSED, reset
    assert "alpha: reset; started, then stopped again: max_iterations reached (1/1)" in (
        reset.stderr
    )
    wait_for(lambda: target_status(sock, "alpha")["status"] == "stopped_max_iter", what="again")
    extended = ctl(lab.config, "extend", "alpha", "--iterations", "+1")
    assert extended.returncode == 0, extended
    assert extended.stdout.strip().endswith("; started")
    daemon.wait_event("iteration_finished", target="alpha", count=2)
    outcomes = [(e["verb"], e["outcome"]) for e in daemon.events("operator_command")]
    assert outcomes == [("reset", "refused"), ("extend", "ok")]
    assert daemon.stop() == 0
