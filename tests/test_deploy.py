"""The shipped systemd units and cron example: systemd accepts them and they say what we need."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from autoloop_daemon.observers.alerts import DRAIN_LIMIT_S

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNIT = DEPLOY / "autoloopd.service"
CRON = DEPLOY / "autoloopd-scheduled.cron"
README = DEPLOY / "README.md"
SCHEDULED = DEPLOY / "autoloopd-scheduled@.service"
TIMER = DEPLOY / "autoloopd-scheduled@.timer"
FAILURE = DEPLOY / "autoloopd-failure@.service"
# Units made from the templates above, as an operator would start them.
SCHEDULED_INSTANCES = (
    "autoloopd-scheduled@tech-article.service",
    "autoloopd-scheduled@tech-article.timer",
    "autoloopd-failure@autoloopd-scheduled@tech-article.service.service",
)
# The sandbox of autoloopd.service, which the scheduled service repeats.
HARDENING_KEYS = (
    "User", "Group", "StateDirectory", "StateDirectoryMode", "UMask", "NoNewPrivileges",
    "ProtectSystem", "ReadWritePaths", "PrivateTmp", "ProtectHome", "PrivateDevices",
    "PrivateMounts", "ProtectProc", "RemoveIPC", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock",
    "ProtectHostname", "CapabilityBoundingSet", "AmbientCapabilities", "RestrictSUIDSGID",
    "LockPersonality", "RestrictRealtime", "SystemCallArchitectures",
    "RestrictAddressFamilies", "KillMode", "KillSignal", "TimeoutStopSec",
)  # fmt: skip

SHIPPED_EXEC_START = "ExecStart=/usr/local/bin/autoloopd --config /etc/autoloopd/config.toml"
TEST_EXEC_START = (
    f"ExecStart={sys.executable} -m autoloop_daemon --config /etc/autoloopd/config.toml"
)

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Parse a unit file into section -> key -> values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        assert not line.endswith("\\"), "continuation lines are not used in the unit"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    """The single value of ``key``; fails if absent or repeated."""
    values = section.get(key)
    assert values is not None, f"{key}= is missing"
    assert len(values) == 1, f"{key}= is set {len(values)} times"
    return values[0]


SHIPPED_BINARY = "=/usr/local/bin/autoloopd "
TEST_BINARY = f"={sys.executable} -m autoloop_daemon "


def verifiable_copy(tmp_path: Path, text: str) -> Path:
    """Write ``text`` as autoloopd.service in tmp_path with every Exec*= line (start, the
    --check before it, reload) pointing at a real binary."""
    assert SHIPPED_EXEC_START in text.splitlines()
    copy = tmp_path / "autoloopd.service"
    copy.write_text(text.replace(SHIPPED_BINARY, TEST_BINARY))
    return copy


def systemd_verify(unit: Path) -> subprocess.CompletedProcess[str]:
    """Run ``systemd-analyze verify --man=no`` on ``unit``, capturing everything it prints."""
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_systemd_analyze
def test_systemd_analyze_verify_prints_nothing(tmp_path: Path) -> None:
    """The unit verifies with no output at all (verify only warns on unknown keys)."""
    shipped = UNIT.read_text()
    copy = verifiable_copy(tmp_path, shipped)

    # The copy differs from the shipped file in the binary of the Exec*= lines only.
    diff = [
        (a, b)
        for a, b in zip(shipped.splitlines(), copy.read_text().splitlines(), strict=True)
        if a != b
    ]
    assert (SHIPPED_EXEC_START, TEST_EXEC_START) in diff
    assert [a.split("=", 1)[0] for a, _ in diff] == ["ExecStartPre", "ExecStart", "ExecReload"]
    assert all(b == a.replace(SHIPPED_BINARY, TEST_BINARY) for a, b in diff)

    result = systemd_verify(copy)
    assert (result.stdout, result.stderr) == ("", "")
    assert result.returncode == 0


@needs_systemd_analyze
def test_verify_would_catch_an_unknown_key(tmp_path: Path) -> None:
    """Sanity check of the test above: this systemd reports keys it does not know."""
    text = UNIT.read_text().replace("[Service]\n", "[Service]\nNoSuchSetting=yes\n", 1)
    result = systemd_verify(verifiable_copy(tmp_path, text))
    assert "NoSuchSetting" in result.stdout + result.stderr


def test_unit_has_the_required_settings() -> None:
    """Type=notify, graceful stop, no restart loop on a bad config, watchdog, hardening."""
    unit = parse_unit(UNIT.read_text())
    service = unit["Service"]

    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert f"ExecStart={one(service, 'ExecStart')}" == SHIPPED_EXEC_START
    # The config is checked before the start, and a reload that finds it invalid fails.
    config = "--config /etc/autoloopd/config.toml"
    assert one(service, "ExecStartPre") == f"/usr/local/bin/autoloopd {config} --check"
    assert one(service, "ExecReload") == f"/usr/local/bin/autoloopd ctl {config} reload"
    assert one(service, "EnvironmentFile") == "-/etc/autoloopd/env"
    # One orchestrator killed for memory does not stop the service; MemoryMax= is an example.
    assert one(service, "OOMPolicy") == "continue"
    assert re.search(r"^#\s*MemoryMax=\d+[KMGT]?$", UNIT.read_text(), re.M)
    assert one(service, "KillMode") == "mixed"
    assert one(service, "KillSignal") == "SIGTERM"

    stop_timeout = re.fullmatch(r"(\d+)s?", one(service, "TimeoutStopSec"))
    assert stop_timeout is not None
    # Above the default shutdown_grace_seconds + term_grace_seconds + the alerts' deadline.
    assert int(stop_timeout.group(1)) > 30 + 10 + DRAIN_LIMIT_S

    assert one(service, "Restart") == "on-failure"
    assert one(service, "RestartSec") == "10"
    assert one(service, "RestartPreventExitStatus").split() == ["65", "78"]
    assert int(one(service, "WatchdogSec")) > 0
    # systemd 252 knows neither of these; the backoff is the start rate limit instead.
    assert "RestartSteps" not in service and "RestartMaxDelaySec" not in service
    assert int(one(unit["Unit"], "StartLimitBurst")) > 0
    assert int(one(unit["Unit"], "StartLimitIntervalSec")) > 0

    assert one(service, "User") == "autoloopd"
    assert one(service, "Group") == "autoloopd"
    assert one(service, "StateDirectory") == "autoloopd"
    assert one(service, "UMask") == "0027"
    assert "PYTHONUNBUFFERED=1" in one(service, "Environment").split()
    writable = one(service, "ReadWritePaths").split()
    assert "/var/lib/autoloopd" in writable
    assert {"/srv/skills", "-/srv/skills"} & set(writable)
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "read-only",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "SystemCallArchitectures": "native",
    }.items():
        assert one(service, key) == value, key

    assert one(unit["Install"], "WantedBy") == "multi-user.target"


def test_cron_example_runs_one_scheduled_iteration_every_four_hours() -> None:
    """The /etc/cron.d example: valid shape, scheduled mode, output to a log, no '%'."""
    text = CRON.read_text()
    assert text.endswith("\n")  # cron ignores a last line without a newline
    jobs = [
        line
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#") and not re.match(r"^\w+=", line)
    ]
    assert len(jobs) == 1
    minute, hour, dom, month, dow, user, command = jobs[0].split(None, 6)
    assert minute.isdigit() and 0 <= int(minute) < 60
    assert (hour, dom, month, dow) == ("*/4", "*", "*", "*")
    assert user == "autoloopd"
    argv = command.split()
    assert argv[0] in {"autoloopd", "/usr/local/bin/autoloopd"}
    assert argv[argv.index("--mode") + 1] == "scheduled"
    assert "--target" in argv and "--state-root" in argv
    # Output appended to a log; a failure still prints one line, which cron mails.
    assert re.search(r'>>\s*/var/log/autoloopd/\S+\.log 2>&1 \|\| echo "[^"]*\$\?[^"]*"$', command)
    assert "%" not in command  # cron turns % into a newline
    assert "flock" not in command  # autoloopd locks the state root itself


def cron_job(text: str) -> str:
    """The command of the cron file's only job line."""
    jobs = [
        line
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#") and not re.match(r"^\w+=", line)
    ]
    assert len(jobs) == 1
    return jobs[0].split(None, 6)[6]


def test_cron_example_mails_failures_to_someone() -> None:
    """MAILTO is set to an address: an empty MAILTO would hide the circuit breaker's exit 1."""
    settings = [
        line.partition("=")[2].strip()
        for line in CRON.read_text().splitlines()
        if re.match(r"^\s*MAILTO\s*=", line)
    ]
    assert len(settings) == 1, settings
    address = settings[0].strip("\"'")
    assert address, "MAILTO is empty: cron would mail nothing"
    assert re.fullmatch(r"[^@\s]+@[^@\s]+", address), address


@pytest.mark.parametrize("exit_code", [0, 1, 75])
def test_cron_command_reports_a_non_zero_exit(tmp_path: Path, exit_code: int) -> None:
    """Run the job line with /bin/sh, as cron does, with a stand-in `autoloopd` on the PATH.

    Its output lands in the log file; stdout (what cron mails) is empty after success and
    names the exit status after a failure.
    """
    command = cron_job(CRON.read_text()).replace("/var/log/autoloopd/", f"{tmp_path}/log/")
    (tmp_path / "log").mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "autoloopd"
    fake.write_text(f'#!/bin/sh\necho "--- Iteration 1/30 ---"\necho "$*" >&2\nexit {exit_code}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "LC_ALL": "C"}
    result = subprocess.run(
        ["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    (log_file,) = (tmp_path / "log").iterdir()
    logged = log_file.read_text()
    assert "--- Iteration 1/30 ---" in logged and "--mode scheduled" in logged
    assert result.stderr == ""
    if exit_code == 0:
        assert result.stdout == ""  # no mail for a run that went well
    else:
        assert result.returncode == 0  # the echo ran
        assert f"exited {exit_code}" in result.stdout
        assert len(result.stdout.splitlines()) == 1


def verifiable_scheduled_units(tmp_path: Path, inject: str | None = None) -> None:
    """Copy the scheduled-mode units into tmp_path, ExecStart pointing at a real binary.

    `inject` adds that line to the [Service] section of the scheduled service template.
    """
    for unit in (SCHEDULED, TIMER, FAILURE):
        text = unit.read_text()
        if unit is SCHEDULED:
            shipped = "ExecStart=/usr/local/bin/autoloopd "
            assert text.count(shipped) == 1
            text = text.replace(shipped, f"ExecStart={sys.executable} -m autoloop_daemon ")
            if inject is not None:
                text = text.replace("[Service]\n", f"[Service]\n{inject}\n", 1)
        (tmp_path / unit.name).write_text(text)


@needs_systemd_analyze
@pytest.mark.parametrize("instance", SCHEDULED_INSTANCES)
def test_scheduled_units_verify_with_no_output(tmp_path: Path, instance: str) -> None:
    """Each scheduled-mode unit, instantiated from its template, verifies with no output."""
    verifiable_scheduled_units(tmp_path)
    result = systemd_verify(tmp_path / instance)
    assert (result.stdout, result.stderr) == ("", "")
    assert result.returncode == 0


@needs_systemd_analyze
def test_verify_reads_the_template_of_an_instance(tmp_path: Path) -> None:
    """Sanity check of the test above: verifying an instance reads its template file."""
    verifiable_scheduled_units(tmp_path, inject="NoSuchSetting=yes")
    result = systemd_verify(tmp_path / SCHEDULED_INSTANCES[0])
    assert "NoSuchSetting" in result.stdout + result.stderr


def test_scheduled_service_runs_one_iteration_and_reports_failure() -> None:
    """Type=oneshot, --mode scheduled for the instance's target, an OnFailure hook, the
    daemon unit's sandbox, and no [Install] (the timer starts it)."""
    unit = parse_unit(SCHEDULED.read_text())
    service = unit["Service"]
    assert one(service, "Type") == "oneshot"
    argv = one(service, "ExecStart").split()
    assert argv[0] == "/usr/local/bin/autoloopd"
    assert argv[argv.index("--mode") + 1] == "scheduled"
    assert argv[argv.index("--target") + 1] == "/srv/skills/%i"
    assert argv[argv.index("--state-root") + 1] == "/var/lib/autoloopd/%i"
    assert "--config" not in argv
    assert "%I" not in one(service, "ExecStart")  # %I turns the name's dashes into slashes
    assert service.get("Restart", ["no"]) == ["no"]  # the next tick is the retry
    assert re.fullmatch(r"\d+(min|h|s)?", one(service, "TimeoutStartSec"))
    # The daemon unit's API keys first (a scheduled run needs them too), then the target's
    # own file, which may override them; both optional.
    assert service["EnvironmentFile"] == [
        "-/etc/autoloopd/env",
        "-/etc/autoloopd/scheduled/%i.env",
    ]

    hook = one(unit["Unit"], "OnFailure")
    assert hook == "autoloopd-failure@%n.service"
    assert (DEPLOY / "autoloopd-failure@.service").is_file()
    assert "Install" not in unit

    daemon = parse_unit(UNIT.read_text())["Service"]
    for key in HARDENING_KEYS:
        assert service.get(key) == daemon.get(key), key


def test_timer_starts_the_service_of_its_instance() -> None:
    """The timer template: a calendar, catch-up after downtime, enabled under timers.target."""
    unit = parse_unit(TIMER.read_text())
    timer = unit["Timer"]
    assert one(timer, "OnCalendar")
    assert one(timer, "Persistent") == "true"
    assert "Unit" not in timer  # so autoloopd-scheduled@X.timer starts autoloopd-scheduled@X
    assert TIMER.name.removesuffix(".timer") == SCHEDULED.name.removesuffix(".service")
    assert one(unit["Install"], "WantedBy") == "timers.target"


def test_failure_hook_logs_the_failed_unit() -> None:
    """The OnFailure hook is a oneshot that logs the failed unit's status at priority err."""
    service = parse_unit(FAILURE.read_text())["Service"]
    assert one(service, "Type") == "oneshot"
    commands = service["ExecStart"]
    assert any("systemctl status" in c and "%i" in c for c in commands)
    assert one(service, "SyslogLevel") == "err"
    assert all(c.lstrip("-").startswith("/") for c in commands)  # absolute paths, no lookup


def test_readme_covers_operations() -> None:
    """The deploy README documents install, reload, status, logs, exit 78, KillMode, cron."""
    text = README.read_text()
    for needle in (
        "useradd",
        "/opt/autoloopd",
        "/usr/local/bin/autoloopd",
        "/etc/autoloopd/config.toml",
        "systemctl daemon-reload && systemctl enable --now autoloopd",
        "systemctl reload autoloopd",
        "systemctl status autoloopd",
        "autoloopd status --config",
        "journalctl -u autoloopd -o cat | jq",
        "78",
        "KillMode=mixed",
        "setsid()",
        "TimeoutStopSec",
        "shutdown_grace_seconds",
        "--mode scheduled",
        "flock",
        "autoloopd-scheduled@.service",
        "autoloopd-scheduled@.timer",
        "autoloopd-failure@.service",
        "OnFailure=",
        "MAILTO",
    ):
        assert needle in text, needle


def test_production_config_has_absolute_paths_and_validates(tmp_path: Path) -> None:
    """deploy/config.toml: every path absolute, the unit's state directory and socket, and
    it passes `--check` once its target directories exist (moved under tmp_path here)."""
    text = (DEPLOY / "config.toml").read_text()
    data = tomllib.loads(text)
    assert data["daemon"]["state_dir"] == "/var/lib/autoloopd"
    assert data["daemon"]["control_socket"] == "/var/lib/autoloopd/autoloopd.sock"
    paths = [data["daemon"]["state_dir"], *(t["path"] for t in data["targets"])]
    assert all(p.startswith("/") for p in paths), paths
    assert data["defaults"]["orchestrator"][0].startswith("/")
    script = "/opt/auto-improvement/skills/improvement-orchestrator/scripts/orchestrate.py"
    (tmp_path / "orchestrate.py").write_text("")
    moved = (
        text.replace("/srv/skills/", f"{tmp_path}/skills/")
        .replace("/var/lib/autoloopd", f"{tmp_path}/state")
        .replace("/opt/autoloopd/bin/python", sys.executable)
        .replace(script, str(tmp_path / "orchestrate.py"))
    )
    for target in data["targets"]:
        (tmp_path / "skills" / target["name"]).mkdir(parents=True)
    config = tmp_path / "config.toml"
    config.write_text(moved)
    done = subprocess.run(
        [sys.executable, "-m", "autoloop_daemon", "--config", str(config), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
