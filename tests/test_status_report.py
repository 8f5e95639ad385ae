"""`GET /api/status/report` and `autoloopd status` over it, against a real daemon: the text
lists the targets with something to tell and counts the quiet ones, `--all` lists every
one, `--json` is the report the client would build itself from `/api/status` and
`/api/reviews`, and the route refuses what it does not know."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from autoloop_daemon.clock import parse_iso
from autoloop_daemon.control.client import request_bytes
from autoloop_daemon.status_report import from_daemon, with_queues
from autoloop_daemon.status_text import is_quiet, render_text, zone_of
from tests.helpers.control import api, ctl, target_status
from tests.helpers.daemon import Daemon, Lab, dry_target
from tests.helpers.process import run_autoloopd
from tests.helpers.review_queue import upstream_entry, write_pending
from tests.helpers.wait import wait_for


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Lab, Daemon, Path]]:
    """A daemon with four targets after their first iteration: two quietly cooling down
    (`calm`, `held`, the latter with a candidate awaiting review), `done` stopped at its
    limit and `rest` paused."""
    lab = Lab(tmp_path)
    names = ("calm", "held", "done", "rest")
    targets = [dry_target(lab, n, **({"max_iterations": 1} if n == "done" else {})) for n in names]
    lab.write(targets, daemon={"exit_when_idle": False})
    daemon = lab.start()
    daemon.wait_event("daemon_ready")
    daemon.wait_event("control_socket_listening")
    for name in names:
        daemon.wait_event("iteration_finished", target=name)
    write_pending(lab.state_root("held"), json.dumps({"pending": [upstream_entry("c1")]}))
    assert ctl(lab.config, "pause", "rest").returncode == 0
    sock = lab.state_dir / "autoloopd.sock"
    wait_for(lambda: target_status(sock, "done")["status"] == "stopped_max_iter", what="done")
    yield lab, daemon, sock
    assert daemon.stop() == 0, daemon.text()[-3000:]
    lab.check_state_roots()


def _rows(text: str) -> dict[str, str]:
    """TARGET -> STATUS of a status table (the lines before the first blank one)."""
    lines = text.partition("\n\n")[0].splitlines()
    return {line.split()[0]: line.split()[1] for line in lines[1:] if not line[0].isdigit()}


def test_the_text_lists_what_has_something_to_tell_and_counts_the_rest(
    fleet: tuple[Lab, Daemon, Path],
) -> None:
    lab, daemon, _ = fleet
    busy = run_autoloopd(["status", "--config", str(lab.config)], timeout=30)
    assert busy.returncode == 0, busy
    assert busy.stdout.startswith("TARGET"), busy.stdout
    assert _rows(busy.stdout) == {"held": "cooldown", "done": "stopped_max_iter",
                                  "rest": "paused"}  # fmt: skip
    assert "1 target between turns with nothing to tell, not listed (cooldown 1)" in busy.stdout
    assert f"daemon: running, pid {daemon.pid}" in busy.stdout
    assert "reviews: 1 candidate awaiting review (held: 1)" in busy.stdout

    every = run_autoloopd(["status", "--config", str(lab.config), "--all"], timeout=30)
    assert every.returncode == 0, every
    assert set(_rows(every.stdout)) == {"calm", "held", "done", "rest"}
    assert "not listed" not in every.stdout


def test_the_json_is_the_report_the_client_builds_from_status_and_reviews(
    fleet: tuple[Lab, Daemon, Path],
) -> None:
    lab, _, sock = fleet
    done = run_autoloopd(["status", "--config", str(lab.config), "--json"], timeout=30)
    assert done.returncode == 0, done
    made = json.loads(done.stdout)
    code, payload = api(sock, "GET", "/api/status")
    assert code == 200
    code, reviews = api(sock, "GET", "/api/reviews")
    assert code == 200
    built = with_queues(from_daemon(payload, str(sock)), reviews["targets"])
    assert _without_uptime(made) == _without_uptime(built)
    assert made["reviews_pending"] == 1 and made["daemon"]["control_socket"] == str(sock)
    by_name = {r["target"]: r for r in made["targets"]}
    assert by_name["held"]["pending_reviews"] == 1
    assert by_name["calm"]["state_root"] == str(lab.state_root("calm"))
    # The same text the client makes from the files' form of the report.
    code, text = request_bytes(sock, "GET", "/api/status/report?form=text&all=1")
    assert code == 200
    assert _rows(text.decode()) == _rows(render_text(made, every_row=True))


def test_the_json_names_a_queue_that_cannot_be_read_and_counts_the_empty_ones_zero(
    fleet: tuple[Lab, Daemon, Path],
) -> None:
    """The daemon reads only the queues that hold something (or cannot be read) into its
    report; every other target still gets 0 and no problem, as the full listing says."""
    lab, _, sock = fleet
    broken = write_pending(lab.state_root("calm"), "{not json")
    code, reviews = api(sock, "GET", "/api/reviews")
    assert code == 200
    assert len(reviews["targets"]) == 4  # the listing still has every target
    done = run_autoloopd(["status", "--config", str(lab.config), "--json"], timeout=30)
    assert done.returncode == 0, done
    made = json.loads(done.stdout)
    code, payload = api(sock, "GET", "/api/status")
    assert code == 200
    built = with_queues(from_daemon(payload, str(sock)), reviews["targets"])
    assert _without_uptime(made) == _without_uptime(built)
    by_name = {r["target"]: r for r in made["targets"]}
    assert str(broken) in by_name["calm"]["review_problem"]
    assert (by_name["calm"]["pending_reviews"], by_name["held"]["pending_reviews"]) == (0, 1)
    assert [(by_name[n]["pending_reviews"], by_name[n]["review_problem"]) for n in
            ("done", "rest")] == [(0, None), (0, None)]  # fmt: skip


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("form=yaml", "form"),
        ("form=json&all=yes", "all"),
        ("all=2", "all"),
        ("socket=" + "s" * 5000, "socket"),
        ("utc_offset=abc", "utc_offset"),
        ("utc_offset=50460", "utc_offset"),  # 14 h 1 min
        ("form=text&utc_offset=30", "utc_offset"),  # not whole minutes
        ("tz=../../etc/passwd", "tz"),
        ("tz=" + "A" * 65, "tz"),
    ],
)
def test_the_route_refuses_what_it_does_not_know_naming_it(
    fleet: tuple[Lab, Daemon, Path], query: str, named: str
) -> None:
    _, daemon, sock = fleet
    code, body = api(sock, "GET", f"/api/status/report?{query}")
    assert code == 400 and body["error"].startswith(named), body
    assert daemon.running()


def test_the_texts_times_are_at_the_clients_offset_from_utc(
    fleet: tuple[Lab, Daemon, Path],
) -> None:
    """The daemon renders the text, at the offset from UTC the client sends: an operator
    sees the next run in their own clock, whatever the service's zone."""
    lab, _, sock = fleet
    next_run = target_status(sock, "calm")["next_run_at"]
    when = parse_iso(next_run)
    assert when is not None
    nepal = timezone(timedelta(hours=5, minutes=45))
    shown = when.astimezone(nepal).strftime("%Y-%m-%d %H:%M:%S")
    done = run_autoloopd(
        ["status", "--config", str(lab.config), "--all"], env={"TZ": "NPT-5:45"}, timeout=30
    )
    assert done.returncode == 0, done
    [row] = [line for line in done.stdout.splitlines() if line.startswith("calm ")]
    assert shown in row, (shown, row)
    code, body = request_bytes(sock, "GET", "/api/status/report?all=1&utc_offset=0")
    assert code == 200
    [row] = [line for line in body.decode().splitlines() if line.startswith("calm ")]
    assert when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") in row


def test_each_client_gets_its_own_socket_in_one_cached_rendering(
    fleet: tuple[Lab, Daemon, Path],
) -> None:
    _, _, sock = fleet
    answers: list[dict[str, Any]] = []
    for given in ("/one", 'two "quoted"\\', None):
        query = "form=json" + ("" if given is None else f"&socket={_quoted(given)}")
        code, body = request_bytes(sock, "GET", f"/api/status/report?{query}")
        assert code == 200
        answers.append(json.loads(body))
        assert answers[-1]["daemon"]["control_socket"] == given
        assert {r["target"] for r in answers[-1]["targets"]} == {"calm", "held", "done", "rest"}


def _without_uptime(report: dict[str, Any]) -> dict[str, Any]:
    return {**report, "daemon": {k: v for k, v in report["daemon"].items() if k != "uptime_s"}}


def _quoted(text: str) -> str:
    return quote(text, safe="")


def _row(name: str, status: str, **values: Any) -> dict[str, Any]:
    return {"target": name, "status": status, **values}


@pytest.mark.parametrize(
    ("row", "quiet"),
    [
        (_row("a", "cooldown"), True),
        (_row("a", "waiting"), True),
        (_row("a", "loading"), True),
        (_row("a", "cooldown", consecutive_errors=2), False),
        (_row("a", "cooldown", paused=True), False),
        (_row("a", "cooldown", pending_reviews=1), False),
        (_row("a", "cooldown", review_problem="unreadable"), False),
        (_row("a", "running", running_iteration=3), False),
        (_row("a", "stopped_max_iter"), False),
        (_row("a", "not_started", reason="locked"), False),
        (_row("a", "unreadable", error="bad JSON"), False),
    ],
)
def test_a_row_is_quiet_only_between_turns_with_nothing_wrong(
    row: dict[str, Any], quiet: bool
) -> None:
    assert is_quiet(row) is quiet


def test_while_the_fleet_loads_a_target_the_last_shutdown_stopped_is_quiet() -> None:
    """During start-up the loaded targets still show the status the last SIGTERM left
    (`stopped_signal`) until every target is in and they resume: counted, not listed. With
    the daemon ready, or from the files, such a row is listed."""
    rows = [_row("a", "stopped_signal"), _row("b", "loading"), _row("c", "stopped_max_iter")]
    daemon = {"running": True, "source": "socket", "pid": 7, "uptime_s": 3.0, "ready": False}
    loading = {"daemon": daemon, "budget": {"spent_usd": 0.0}, "targets": rows}
    text = render_text(loading)
    assert text.splitlines()[1].split()[:2] == ["c", "stopped_max_iter"]
    assert "2 targets between turns with nothing to tell, not listed (loading 1, " in text
    assert "stopped_signal 1)" in text and "\n1 target still loading" in text
    ready = render_text({**loading, "daemon": {**daemon, "ready": True}})
    assert _rows(ready) == {"a": "stopped_signal", "c": "stopped_max_iter"}
    assert "(loading 1)" in ready
    files = {"running": False, "source": "files", "pid": None, "note": "gone"}
    without = render_text({**loading, "daemon": files}).partition("\n")[2]  # the daemon line
    assert _rows(without) == {"a": "stopped_signal", "c": "stopped_max_iter"}


def test_the_text_of_a_fleet_with_nothing_to_tell_is_the_count_and_the_summary() -> None:
    report = {
        "daemon": {"running": True, "source": "socket", "pid": 7, "uptime_s": 61.0},
        "budget": {"spent_usd": 1.5, "cap_usd": None},
        "targets": [_row(f"t{i}", "cooldown") for i in range(1500)] + [_row("w", "waiting")],
    }
    text = render_text(report)
    assert text.splitlines()[0] == (
        "1,501 targets between turns with nothing to tell, not listed (cooldown 1,500, "
        "waiting 1); `autoloopd status --all` lists every target"
    )
    assert "daemon: running, pid 7, up 1m01s\nbudget: $1.50 spent" in text
    every = render_text(report, every_row=True).splitlines()
    assert every[0].split() == ["TARGET", "STATUS", "ITER", "DECISION", "BEST", "LAST",
                                "COST/CAP", "NEXT", "RUN", "WHY"]  # fmt: skip
    assert len(every) == 1 + 1501 + 1 + 2
    empty = render_text({**report, "targets": []})
    assert empty.startswith("TARGET") and "not listed" not in empty


def test_the_texts_times_follow_the_clients_zone_rules_across_a_dst_change() -> None:
    """A next run after the clocks change shows with the zone's rules when the daemon knows
    the zone's name; with an unknown name it falls back to the offset sent (as of now)."""
    row = _row("a", "cooldown", paused=True, next_run_at="2027-07-01T12:00:00Z")  # listed
    report = {
        "daemon": {"running": True, "source": "socket", "pid": 7, "uptime_s": 3.0},
        "budget": {"spent_usd": 0.0},
        "targets": [row],
    }
    winter = -5 * 3600  # New York's offset in December, when the client asked
    named = render_text(report, zone=zone_of("America/New_York", winter))
    assert "2027-07-01 08:00:00" in named  # EDT, -4 h in July
    unknown = render_text(report, zone=zone_of("Nowhere/Atlantis", winter))
    assert "2027-07-01 07:00:00" in unknown
    assert zone_of(None, None) is None and zone_of("../x", 0) == UTC
