"""Alerts: `[[alerts]]` commands and webhooks, against a real `autoloopd --config` run.

The command is tests/fakes/alert_sink.py (it appends the JSON it reads on stdin to a file);
the webhook is a local http.server on 127.0.0.1 (tests/helpers/webhook.py). The threshold
arithmetic and the config validation are tested directly.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any, get_args

import anyio
import pytest

from autoloop_daemon.config.alerts import AlertEvent, AlertSettings
from autoloop_daemon.config.loader import load_config
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.snapshot import BudgetSnapshot, FleetSnapshot
from autoloop_daemon.exceptions import ConfigError
from autoloop_daemon.observers.alerts import Alerter
from autoloop_daemon.policy.thresholds import crossings, new_crossings
from tests.helpers.audit import read_state
from tests.helpers.config import TARGET_A
from tests.helpers.daemon import Lab
from tests.helpers.fakes import fake
from tests.helpers.logs import json_lines, read_jsonl
from tests.helpers.process import run_autoloopd
from tests.helpers.webhook import webhook_receiver

FRACTIONS = (0.5, 0.8, 1.0)


def sink(path: Path, *args: str) -> list[str]:
    """The argv of the fake alert command appending to `path`."""
    return [sys.executable, fake("alert_sink.py"), str(path), *args]


def dry_run(lab: Lab, name: str, **keys: Any) -> dict[str, Any]:
    """A dry-run (simulator) target table."""
    path = lab.skills / name
    path.mkdir(exist_ok=True)
    return {"name": name, "path": str(path), "dry_run": True, "simulated_seconds": 0.01, **keys}


def kinds(alerts: list[dict[str, Any]]) -> list[str]:
    """The `event` of each alert, in order."""
    return [a["event"] for a in alerts]


# ----------------------------------------------------------------- pure threshold logic


def test_crossings_are_every_fraction_reached_and_none_without_a_cap() -> None:
    """0.85 of a cap has reached 0.5 and 0.8 (not 1.0); no cap or an infinite one, nothing."""
    found = crossings(8.5, 10.0, FRACTIONS)
    assert [c.fraction for c in found] == [0.5, 0.8]
    assert [c.key for c in found] == ["budget:0.5:10", "budget:0.8:10"]
    assert crossings(1e9, None, FRACTIONS) == []
    assert crossings(1e9, float("inf"), FRACTIONS) == []
    assert [c.key for c in crossings(5.0, 5.0, [1.0], target="a")] == ["target:a:1:5"]


def test_a_crossing_fires_once_and_a_raised_cap_makes_new_ones() -> None:
    """Keys already fired are skipped; the same spend under a raised cap is a new crossing."""
    fired = {c.key for c in crossings(6.0, 10.0, FRACTIONS)}
    assert new_crossings(crossings(7.0, 10.0, FRACTIONS), fired) == []
    assert [c.key for c in new_crossings(crossings(9.0, 10.0, FRACTIONS), fired)] == [
        "budget:0.8:10"
    ]
    assert [c.key for c in new_crossings(crossings(6.0, 12.0, FRACTIONS), fired)] == [
        "budget:0.5:12"
    ]


# ----------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('events = ["target_stopped"]', "alerts[0]: give command"),
        ('events = ["nope"]\ncommand = ["x"]', "alerts[0].events[0]: must be one of"),
        ('events = []\ncommand = ["x"]', "alerts[0].events: must not be empty"),
        ('events = ["target_stopped"]\nurl = "ftp://h/x"', "alerts[0].url: 'ftp://h/x' is not"),
        ('events = ["target_stopped"]\ncommand = []', "alerts[0].command: the program must"),
        (
            'events = ["budget_threshold"]\ncommand = ["x"]\nbudget_fractions = [0.5, 0.5]',
            "alerts[0].budget_fractions: a fraction appears twice",
        ),
        (
            'events = ["budget_threshold"]\ncommand = ["x"]\nbudget_fractions = [0]',
            "alerts[0].budget_fractions[0]: must be greater than 0",
        ),
        ('events = ["target_stopped"]\ncommand = ["x"]\ntimeout = 3', "did you mean"),
        ('events = ["target_stopped"]\nurl = "http://h"\nretries = -1', "must be at least 0"),
    ],
)
def test_a_bad_alert_entry_is_one_line_naming_its_key(
    tmp_path: Path, body: str, problem: str
) -> None:
    """Every mistake in an [[alerts]] entry is one ConfigError line with the key path."""
    (tmp_path / "a").mkdir()
    config = tmp_path / "c.toml"
    config.write_text(f"{TARGET_A}\n[[alerts]]\n{body}\n")
    with pytest.raises(ConfigError) as err:
        load_config(config, environ={})
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{config}: ")
    assert problem in message


def test_a_valid_alert_entry_gets_its_defaults(tmp_path: Path) -> None:
    """Defaults: 10 s timeout, 3 retries, fractions 0.5 / 0.8 / 1.0."""
    (tmp_path / "a").mkdir()
    config = tmp_path / "c.toml"
    config.write_text(f'{TARGET_A}\n[[alerts]]\nevents = ["daemon_stopping"]\nurl = "http://h/x"\n')
    (alert,) = load_config(config, environ={}).alerts
    assert (alert.timeout_seconds, alert.retries, alert.budget_fractions) == (
        10.0,
        3,
        [0.5, 0.8, 1.0],
    )


# ----------------------------------------------------------------- the real daemon


def test_alerts_fire_once_per_crossing_and_a_restart_does_not_repeat_them(
    tmp_path: Path,
) -> None:
    """A fleet run sends, through the command and the webhook (which fails once: retried):
    each budget fraction reached (shared cap and target cap), each target's stop, the
    breaker trip and the daemon's stop. A second run on the same state sends only its own
    daemon_stopping."""
    lab = Lab(tmp_path)
    out = tmp_path / "alerts.jsonl"
    targets = [
        dry_run(lab, "alpha", max_iterations=6, max_cost_usd=0.3, estimated_cost_usd=0.05),
        lab.target(
            "gamma",
            "crash",
            max_consecutive_errors=1,
            estimated_cost_usd=0.01,
            env={"API_KEY": "sk-alert-secret-never-sent"},
        ),
    ]
    budget = {"max_cost_usd": 0.8}
    with webhook_receiver(fail_first=1) as hook:
        alerts = [
            {"events": ["budget_threshold", "target_stopped", "circuit_breaker",
                        "daemon_stopping"], "command": sink(out)},
            {"events": ["budget_threshold", "circuit_breaker"], "url": hook.url,
             "budget_fractions": [0.5], "retries": 2},
        ]  # fmt: skip
        lab.write(targets, defaults={"mode": "single-run"}, budget=budget, alerts=alerts)
        first = run_autoloopd(["--config", str(lab.config)], timeout=90)
        assert first.returncode == 1, first.stdout + first.stderr  # gamma ended in error

        sent = read_jsonl(out)
        alpha = read_state(lab.state_root("alpha"))
        spent = alpha["total_cost_usd"] + read_state(lab.state_root("gamma"))["total_cost_usd"]
        expected_budget = [
            ("target", "alpha", f) for f in FRACTIONS if alpha["total_cost_usd"] >= f * 0.3
        ] + [("budget", None, f) for f in FRACTIONS if spent >= f * 0.8]
        got_budget = [
            (a["scope"], a["target"], a["fraction"])
            for a in sent
            if a["event"] == "budget_threshold"
        ]
        assert sorted(got_budget, key=str) == sorted(expected_budget, key=str)
        assert ("target", "alpha", 0.5) in expected_budget and ("budget", None, 0.5) in (
            expected_budget
        ), "the run should reach half of alpha's cap and of the shared cap"
        stopped = {a["target"]: a["status"] for a in sent if a["event"] == "target_stopped"}
        assert stopped == {"alpha": alpha["status"], "gamma": "error"}
        (breaker,) = [a for a in sent if a["event"] == "circuit_breaker"]
        assert breaker["target"] == "gamma" and "circuit breaker tripped" in breaker["reason"]
        (stopping,) = [a for a in sent if a["event"] == "daemon_stopping"]
        assert stopping["reason"] == "all targets stopped"
        assert all(a["host"] and a["at"] and a["message"] for a in sent)
        assert "sk-alert-secret-never-sent" not in out.read_text() + json.dumps(hook.accepted)

        # The webhook got the 0.5 crossings and the breaker, after one refused attempt.
        assert sorted(kinds(hook.accepted)) == sorted(
            ["circuit_breaker"] + ["budget_threshold" for e in expected_budget if e[2] == 0.5]
        )
        assert hook.requests == len(hook.accepted) + 1
        assert set(hook.content_types) == {"application/json"}
        log = json_lines(first.stdout + first.stderr)
        assert [e for e in log if e["event"] == "alert_failed"] == []
        via_url = [e for e in log if e["event"] == "alert_sent" and e["via"] == "url"]
        assert sorted(e["attempts"] for e in via_url)[-1] == 2  # the one that was refused once
        assert len([e for e in log if e["event"] == "alert_sent"]) == len(sent) + len(hook.accepted)
        fired = json.loads((lab.state_dir / "alerts_fired.json").read_text())["fired"]
        assert len(fired) == len(expected_budget)

        # Restart without the broken target (its breaker would be reset and trip anew).
        lab.write(targets[:1], defaults={"mode": "single-run"}, budget=budget, alerts=alerts)
        hook_before = len(hook.accepted)
        second = run_autoloopd(["--config", str(lab.config)], timeout=90)
        assert second.returncode == 0, second.stdout + second.stderr
        again = read_jsonl(out)[len(sent) :]
        assert kinds(again) == ["daemon_stopping"]
        assert len(hook.accepted) == hook_before


def test_sigterm_sends_daemon_stopping_and_no_stop_alert_per_target(tmp_path: Path) -> None:
    """A stop request sends one daemon_stopping naming the signal; the targets it stops
    (stopped_signal) are not reported one by one."""
    lab = Lab(tmp_path)
    out = tmp_path / "alerts.jsonl"
    targets = [dry_run(lab, name, mode="continuous", cooldown_minutes=10) for name in "ab"]
    alerts = [{"events": ["target_stopped", "daemon_stopping"], "command": sink(out)}]
    lab.write(targets, alerts=alerts)
    daemon = lab.start()
    daemon.wait_event("iteration_finished", count=2)
    assert daemon.stop(signal.SIGTERM) == 0
    sent = read_jsonl(out)
    assert kinds(sent) == ["daemon_stopping"]
    assert sent[0]["reason"] == "SIGTERM"
    daemon.wait_event("alert_sent", alert="daemon_stopping", via="command")


def test_a_failing_alert_is_logged_and_the_daemon_carries_on(tmp_path: Path) -> None:
    """A webhook nobody answers and a command that hangs past its timeout each log
    alert_failed with the attempts made; every target still runs to its end, exit 0."""
    lab = Lab(tmp_path)
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    alerts = [
        {"events": ["target_stopped"], "url": "http://127.0.0.1:9/hook", "retries": 1,
         "timeout_seconds": 2},
        {"events": ["target_stopped"], "command": hang, "retries": 0, "timeout_seconds": 0.5},
    ]  # fmt: skip
    lab.write([dry_run(lab, "a", max_iterations=2)], defaults={"mode": "single-run"}, alerts=alerts)
    done = run_autoloopd(["--config", str(lab.config)], timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    failed = {e["via"]: e for e in json_lines(done.stdout) if e["event"] == "alert_failed"}
    assert failed["url"]["attempts"] == 2 and "127.0.0.1:9" in failed["url"]["error"]
    assert (
        failed["command"]["attempts"] == 1 and "no exit within 0.5 s" in failed["command"]["error"]
    )
    assert read_state(lab.state_root("a"))["status"] == "stopped_max_iter"


def test_config_reference_documents_every_alert_key_and_event() -> None:
    """docs/config.md names every key of an [[alerts]] entry and every alert event."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "config.md").read_text()
    missing = [
        name
        for name in [*AlertSettings.model_fields, *get_args(AlertEvent)]
        if f"`{name}`" not in text
    ]
    assert missing == []


# ----------------------------------------------------------------- in-process


def _snapshot() -> FleetSnapshot:
    return FleetSnapshot(
        pid=1, started_at="2026-01-01T00:00:00Z", ready=True, shutting_down=False,
        budget=BudgetSnapshot(spent_usd=0.0, reserved_usd=0.0, cap_usd=10.0), targets=(),
    )  # fmt: skip


def _stopped(name: str) -> ev.TargetStopped:
    return ev.TargetStopped(
        name, "stopped_max_iter", "max_iterations reached", 1, 5, 0.1, 0.0, None, None, "/x"
    )


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_the_subscriber_never_waits_a_full_queue_drops_and_logs(
    tmp_path: Path, captured: list[dict[str, Any]]
) -> None:
    """Publishing never blocks the loop: past the queue's size an alert is dropped and
    logged (`alert_dropped`); the queued one is delivered once the alerter's task runs, and
    a budget crossing seen again (a second BudgetChanged) is not queued twice."""
    out = tmp_path / "alerts.jsonl"
    rule = AlertSettings(events=["target_stopped", "budget_threshold"], command=sink(out))
    alerter = Alerter([rule], state_dir=tmp_path, snapshot=_snapshot, queue_size=2)
    alerter(ev.BudgetChanged(spent_usd=5.0, reserved_usd=0.0, cap_usd=10.0))  # 0.5 crossed
    alerter(ev.BudgetChanged(spent_usd=5.5, reserved_usd=0.0, cap_usd=10.0))  # nothing new
    alerter(_stopped("a"))
    alerter(_stopped("b"))  # the queue (2) is full: dropped
    dropped = [e for e in captured if e["event"] == "alert_dropped"]
    assert [(e["alert"], e["reason"]) for e in dropped] == [("target_stopped", "queue full")]
    async with anyio.create_task_group() as tg:
        await tg.start(alerter.run)
        await alerter.finish(limit_s=30)
    sent = read_jsonl(out)
    assert [(a["event"], a.get("fraction"), a.get("target")) for a in sent] == [
        ("budget_threshold", 0.5, None),
        ("target_stopped", None, "a"),
    ]
    assert json.loads((tmp_path / "alerts_fired.json").read_text())["fired"] == ["budget:0.5:10"]


def test_budget_alert_at_sets_the_fractions_of_alerts_that_set_none(tmp_path: Path) -> None:
    """`[budget] alert_at` is the default `budget_fractions` of every [[alerts]] entry that
    names none of its own; an entry's own list wins."""
    (tmp_path / "a").mkdir()
    config = tmp_path / "c.toml"
    config.write_text(
        "[budget]\nalert_at = [0.9, 0.25]\n"
        '[[alerts]]\nevents = ["budget_threshold"]\ncommand = ["true"]\n'
        '[[alerts]]\nevents = ["budget_threshold"]\ncommand = ["true"]\nbudget_fractions = [0.5]\n'
        '[[targets]]\nname = "a"\npath = "a"\ndry_run = true\n'
    )
    cfg = load_config(config)
    assert [a.budget_fractions for a in cfg.alerts] == [[0.25, 0.9], [0.5]]


def test_a_slow_alert_command_is_never_swept_as_a_runs_leftover(tmp_path: Path) -> None:
    """An alert command still running while other targets' runs end (each end sweeps the
    orphans no running run owns) is delivered once, on its first call: the sweep must not
    take it for a run's leftover and kill it (it used to: exit -15, then a retry or a loss)."""
    lab = Lab(tmp_path)
    out = tmp_path / "alerts.jsonl"
    targets = [
        dry_run(lab, "quick", max_iterations=1),
        lab.target("busy", "keep", max_iterations=25, cooldown_minutes=0),
    ]
    alerts = [{"events": ["target_stopped"], "command": sink(out, "--delay", "2"), "retries": 2}]
    lab.write(targets, defaults={"mode": "continuous"}, budget={"max_cost_usd": 50}, alerts=alerts)
    done = run_autoloopd(["--config", str(lab.config)], timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    stopped = [a["target"] for a in read_jsonl(out) if a["event"] == "target_stopped"]
    assert sorted(stopped) == ["busy", "quick"]
    calls = Path(f"{out}.calls").read_text()
    assert calls == "..", f"{len(calls)} calls for 2 alerts: one was killed and retried"
    assert "leftover_processes_stopped" not in done.stdout + done.stderr
