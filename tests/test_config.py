"""Tests for autoloop_daemon.config: loading, merging and rejecting TOML configurations."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from autoloop_daemon.config.loader import (
    REFERENCE_ORCHESTRATOR,
    AppConfig,
    load_config,
    validate_cron,
)
from autoloop_daemon.config.summary import check_summary
from autoloop_daemon.exceptions import ConfigError
from tests.helpers.config import TARGET_A, TARGET_B, in_table, in_target

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory holding two target directories `a` and `b` and a plain file `f`."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "f").write_text("not a directory\n")
    return tmp_path


def write(directory: Path, text: str | bytes, name: str = "config.toml") -> Path:
    """Write a config file (dedented when text) and return its path."""
    path = directory / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(path: Path, environ: dict[str, str] | None = None) -> AppConfig:
    """Load with an empty environment unless one is given (never the test runner's)."""
    return load_config(path, environ={} if environ is None else environ)


VALID = """
    [daemon]
    state_dir = "state"
    max_concurrent_iterations = 2
    shutdown_grace_seconds = 5
    log_format = "json"
    log_level = "debug"

    [budget]
    max_cost_usd = 40.0
    cost_per_minute_usd = 0.5

    [defaults]
    max_iterations = 7
    max_cost_usd = 3.0
    cooldown_minutes = 0.5
    env = { SHARED = "yes", LLM_MODEL = "small" }
    orchestrator = ["python3", "orch.py", "--target", "{target}", "--state-root", "{state_root}"]

    [[targets]]
    name = "a"
    path = "a"
    weights = { coverage = 1.0, accuracy = 2 }

    [[targets]]
    name = "b"
    path = "b"
    state_root = "custom/../roots/b"
    mode = "scheduled"
    schedule = "17 */4 * * *"
    max_iterations = 2
    cost_per_minute_usd = 0.25
    env = { LLM_MODEL = "large" }
    scorer = ["python3", "score.py", "{target}", "{iteration}"]
    handoff_arg = ""
    dry_run = true
    seed = 42
    oscillation_window = 0
"""


def test_valid_config_merges_defaults_and_resolves_paths(workdir: Path) -> None:
    """Spec defaults < [defaults] < target table; relative paths resolve against the file."""
    cfg = load(write(workdir, VALID))
    assert cfg.path == (workdir / "config.toml").resolve()
    assert cfg.daemon.state_dir == (workdir / "state").resolve()
    assert cfg.daemon.max_concurrent_iterations == 2
    assert cfg.daemon.log_format == "json"
    assert cfg.budget.max_cost_usd == 40.0
    a, b = cfg.targets
    # a: [defaults] over the daemon's defaults; state root <state_dir>/<name>.
    assert a.name == "a"
    assert a.path == (workdir / "a").resolve()
    assert a.state_root == (workdir / "state" / "a").resolve()
    assert a.mode == "continuous"
    assert a.max_iterations == 7
    assert a.max_cost_usd == 3.0
    assert a.cooldown_minutes == 0.5
    assert a.plateau_window == 3
    assert a.oscillation_window == 4
    assert a.cost_per_minute_usd == 0.5  # from [budget]
    assert a.env == (("LLM_MODEL", "small"), ("SHARED", "yes"))
    assert a.weights == (("accuracy", 2.0), ("coverage", 1.0))
    assert a.orchestrator[:2] == ("python3", "orch.py")
    assert a.scorer is None
    assert a.handoff_arg == "--source"
    assert a.dry_run is False
    # b: its own table wins; tables replace (not merge with) the defaults' tables.
    assert b.state_root == (workdir / "roots" / "b").resolve()
    assert b.mode == "scheduled"
    assert b.schedule == "17 */4 * * *"
    assert b.max_iterations == 2
    assert b.max_cost_usd == 3.0
    assert b.cost_per_minute_usd == 0.25
    assert b.env == (("LLM_MODEL", "large"),)
    assert b.scorer == ("python3", "score.py", "{target}", "{iteration}")
    assert b.handoff_arg is None
    assert b.dry_run is True
    assert b.seed == 42
    assert b.oscillation_window == 0


def test_builtin_defaults_apply_without_defaults_table(workdir: Path) -> None:
    """With no [defaults], a target gets continuous mode and the reference orchestrator."""
    cfg = load(write(workdir, '[[targets]]\nname = "a"\npath = "a"\n'))
    (t,) = cfg.targets
    assert t.mode == "continuous"
    assert t.orchestrator == REFERENCE_ORCHESTRATOR
    assert t.scorer is None
    assert t.max_iterations == 5
    assert t.max_cost_usd == 50.0
    assert t.cost_per_minute_usd == 0.10
    assert cfg.daemon.state_dir == Path("/var/lib/autoloopd")
    assert t.state_root == Path("/var/lib/autoloopd/a")
    assert cfg.budget.max_cost_usd == 100.0


def test_absolute_paths_are_kept(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Absolute state_dir and path are used as given (resolved)."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    text = (
        f'[daemon]\nstate_dir = "{elsewhere}"\n[[targets]]\nname = "x"\npath = "{workdir / "a"}"\n'
    )
    cfg = load(write(elsewhere, text))
    assert cfg.daemon.state_dir == elsewhere.resolve()
    assert cfg.targets[0].path == (workdir / "a").resolve()
    assert cfg.targets[0].state_root == elsewhere.resolve() / "x"


def test_environment_overrides_the_file(workdir: Path) -> None:
    """AUTOLOOPD_* variables from `environ` beat the file; a target's own table beats both."""
    env = {
        "AUTOLOOPD_BUDGET__MAX_COST_USD": "20",
        "AUTOLOOPD_DEFAULTS__MODE": "single-run",
        "AUTOLOOPD_DEFAULTS__DRY_RUN": "true",
        "AUTOLOOPD_DEFAULTS__ENV__EXTRA_VAR": "kept-case",
        "AUTOLOOPD_DAEMON__LOG_LEVEL": "warning",
        "AUTOLOOPD_DAEMON__MAX_CONCURRENT_ITERATIONS": "9",
        "AUTOLOOPD_DEFAULTS__WEIGHTS": '{"clarity": 3}',
        "UNRELATED": "ignored",
    }
    cfg = load(write(workdir, VALID), env)
    assert cfg.budget.max_cost_usd == 20.0
    assert cfg.budget.cost_per_minute_usd == 0.5  # the rest of [budget] still from the file
    assert cfg.daemon.log_level == "warning"
    assert cfg.daemon.max_concurrent_iterations == 9
    a, b = cfg.targets
    assert a.mode == "single-run"
    assert a.dry_run is True
    assert a.max_iterations == 7  # [defaults] from the file is merged, not replaced
    assert dict(a.env) == {"SHARED": "yes", "LLM_MODEL": "small", "EXTRA_VAR": "kept-case"}
    assert a.weights == (("accuracy", 2.0), ("coverage", 1.0))  # the target's own table wins
    assert b.mode == "scheduled"


def test_environ_none_means_os_environ(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an `environ` argument the process environment is read."""
    monkeypatch.setenv("AUTOLOOPD_BUDGET__MAX_COST_USD", "12.5")
    cfg = load_config(write(workdir, TARGET_A))
    assert cfg.budget.max_cost_usd == 12.5


def test_explicit_environ_ignores_os_environ(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explicit `environ` replaces the process environment entirely."""
    monkeypatch.setenv("AUTOLOOPD_BUDGET__MAX_COST_USD", "-1")
    cfg = load_config(write(workdir, TARGET_A), environ={"AUTOLOOPD_DAEMON__LOG_LEVEL": "error"})
    assert cfg.budget.max_cost_usd == 100.0
    assert cfg.daemon.log_level == "error"


def test_bad_environment_value_names_the_variable(workdir: Path) -> None:
    """An invalid override is reported at its key path, naming the variable."""
    path = write(workdir, TARGET_A)
    with pytest.raises(ConfigError) as info:
        load(path, {"AUTOLOOPD_BUDGET__MAX_COST_USD": "-1"})
    message = str(info.value)
    assert message.startswith(f"{path}: budget.max_cost_usd: must be greater than 0")
    assert "AUTOLOOPD_BUDGET__MAX_COST_USD" in message
    with pytest.raises(ConfigError, match=r"defaults\.typo: unknown key"):
        load(path, {"AUTOLOOPD_DEFAULTS__TYPO": "1"})
    with pytest.raises(ConfigError, match="environment"):
        load(path, {"AUTOLOOPD_DEFAULTS__ORCHESTRATOR": "[not json"})


def test_error_uses_the_path_as_given(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The message starts with the file name the user typed, not the resolved path."""
    write(workdir, TARGET_A + "max_iterations = 0\n")
    monkeypatch.chdir(workdir)
    with pytest.raises(ConfigError) as info:
        load(Path("config.toml"))
    assert str(info.value) == ("config.toml: targets[0].max_iterations: must be at least 1 (got 0)")


def test_more_errors_are_counted(workdir: Path) -> None:
    """Only the first error is shown, with the number of others."""
    path = write(workdir, TARGET_A + "max_iterations = 0\nmax_cost_usd = 0\nseed = 0.5\n")
    with pytest.raises(ConfigError, match=r"\(and 2 more\)$"):
        load(path)


BROKEN: list[tuple[str, str | bytes, str]] = [
    # (id, file content, expected key path / words in the message)
    ("syntax-table", "[daemon\n" + TARGET_A, "line 1, column"),
    ("syntax-string", TARGET_A + 'name2 = "unterminated\n', "line 5, column"),
    ("syntax-duplicate-key", TARGET_A + 'name = "again"\n', "line 5"),
    ("empty-file", "", "targets: no [[targets]]"),
    ("comments-only", "# nothing here\n\n", "targets: no [[targets]]"),
    ("no-targets", "[daemon]\nlog_level = 'info'\n", "targets: no [[targets]]"),
    ("binary", b"\x00\x01\x02ELF\x00", "binary"),
    (
        "not-utf8",
        b'[daemon]\nlog_level = "\xff\xfe"\n' + TARGET_A.encode(),
        "line 2: not valid UTF-8",
    ),
    ("unknown-top", "foo = 1\n" + TARGET_A, "foo: unknown key"),
    ("unknown-top-case", "[Daemon]\nlog_level = 'info'\n" + TARGET_A, "Daemon: unknown key"),
    ("unknown-daemon", in_table("daemon", "levle = 'info'"), "daemon.levle: unknown key"),
    ("unknown-budget", in_table("budget", "max_cost = 5"), "budget.max_cost: unknown key"),
    (
        "unknown-defaults",
        in_table("defaults", "max_iteration = 5"),
        "defaults.max_iteration: unknown key",
    ),
    ("name-in-defaults", in_table("defaults", "name = 'x'"), "defaults.name: unknown key"),
    ("unknown-target", TARGET_A + TARGET_B + "max_cost = 5\n", "targets[1].max_cost: unknown key"),
    ("daemon-not-table", "daemon = 3\n" + TARGET_A, "daemon: must be a table"),
    (
        "concurrency-string",
        in_table("daemon", "max_concurrent_iterations = 'four'"),
        "daemon.max_concurrent_iterations: must be an integer",
    ),
    (
        "concurrency-float",
        in_table("daemon", "max_concurrent_iterations = 2.5"),
        "daemon.max_concurrent_iterations: must be an integer",
    ),
    (
        "concurrency-bool",
        in_table("daemon", "max_concurrent_iterations = true"),
        "daemon.max_concurrent_iterations: must be an integer",
    ),
    (
        "concurrency-zero",
        in_table("daemon", "max_concurrent_iterations = 0"),
        "daemon.max_concurrent_iterations: must be at least 1",
    ),
    (
        "concurrency-huge",
        in_table("daemon", "max_concurrent_iterations = 100000"),
        "daemon.max_concurrent_iterations: must be at most",
    ),
    (
        "grace-negative",
        in_table("daemon", "shutdown_grace_seconds = -1"),
        "daemon.shutdown_grace_seconds: must be at least 0",
    ),
    ("log-format", in_table("daemon", "log_format = 'xml'"), "daemon.log_format: must be one of"),
    ("state-dir-type", in_table("daemon", "state_dir = 5"), "daemon.state_dir"),
    (
        "state-dir-empty",
        in_table("daemon", "state_dir = ''"),
        "daemon.state_dir: must not be empty",
    ),
    ("state-dir-file", in_table("daemon", "state_dir = 'f'"), "daemon.state_dir: not a directory"),
    (
        "budget-zero",
        in_table("budget", "max_cost_usd = 0"),
        "budget.max_cost_usd: must be greater than 0",
    ),
    (
        "budget-nan",
        in_table("budget", "max_cost_usd = nan"),
        "budget.max_cost_usd: must be a finite",
    ),
    (
        "budget-inf",
        in_table("budget", "max_cost_usd = inf"),
        "budget.max_cost_usd: must be a finite",
    ),
    (
        "budget-huge",
        in_table("budget", "max_cost_usd = 1e12"),
        "budget.max_cost_usd: must be at most",
    ),
    (
        "rate-bool",
        in_table("budget", "cost_per_minute_usd = true"),
        "budget.cost_per_minute_usd: must be a number",
    ),
    (
        "rate-negative",
        in_table("budget", "cost_per_minute_usd = -0.1"),
        "budget.cost_per_minute_usd: must be at least 0",
    ),
    (
        "max-iterations-zero",
        in_target("max_iterations = 0"),
        "targets[0].max_iterations: must be at least 1",
    ),
    (
        "max-iterations-huge",
        in_target("max_iterations = 10000000"),
        "targets[0].max_iterations: must be at most",
    ),
    (
        "max-iterations-bool",
        in_target("max_iterations = false"),
        "targets[0].max_iterations: must be an integer",
    ),
    (
        "max-iterations-int64",
        in_target("max_iterations = 9223372036854775807"),
        "targets[0].max_iterations: must be at most",
    ),
    (
        "max-cost-negative",
        in_target("max_cost_usd = -5"),
        "targets[0].max_cost_usd: must be greater than 0",
    ),
    ("max-cost-nan", in_target("max_cost_usd = nan"), "targets[0].max_cost_usd: must be a finite"),
    (
        "max-cost-string",
        in_target("max_cost_usd = '5'"),
        "targets[0].max_cost_usd: must be a number",
    ),
    ("plateau-negative", in_target("plateau_window = -1"), "targets[0].plateau_window"),
    ("min-improvement-negative", in_target("min_improvement = -0.1"), "targets[0].min_improvement"),
    (
        "oscillation-one",
        in_target("oscillation_window = 1"),
        "targets[0].oscillation_window: must be 0",
    ),
    ("oscillation-negative", in_target("oscillation_window = -2"), "targets[0].oscillation_window"),
    ("cooldown-negative", in_target("cooldown_minutes = -1"), "targets[0].cooldown_minutes"),
    (
        "cooldown-huge",
        in_target("cooldown_minutes = 1e9"),
        "targets[0].cooldown_minutes: must be at most",
    ),
    ("errors-zero", in_target("max_consecutive_errors = 0"), "targets[0].max_consecutive_errors"),
    (
        "timeout-zero",
        in_target("iteration_timeout_minutes = 0"),
        "targets[0].iteration_timeout_minutes",
    ),
    (
        "timeout-huge",
        in_target("iteration_timeout_minutes = 600000"),
        "targets[0].iteration_timeout_minutes",
    ),
    ("estimate-zero", in_target("estimated_cost_usd = 0"), "targets[0].estimated_cost_usd"),
    ("term-grace-negative", in_target("term_grace_seconds = -1"), "targets[0].term_grace_seconds"),
    ("simulated-negative", in_target("simulated_seconds = -0.5"), "targets[0].simulated_seconds"),
    (
        "backoff-order",
        in_target("backoff_base_seconds = 60\nbackoff_max_seconds = 10"),
        "targets[0].backoff_max_seconds",
    ),
    ("seed-float", in_target("seed = 1.5"), "targets[0].seed: must be an integer"),
    ("dry-run-string", TARGET_A.replace("dry_run = true", "dry_run = 'yes'"), "targets[0].dry_run"),
    ("weight-negative", in_target("weights = { accuracy = -1 }"), "targets[0].weights.accuracy"),
    ("weight-string", in_target("weights = { accuracy = 'high' }"), "targets[0].weights.accuracy"),
    ("mode-unknown", in_target("mode = 'forever'"), "targets[0].mode: must be one of"),
    ("scheduled-no-schedule", in_target("mode = 'scheduled'"), "targets[0].schedule: required"),
    ("scheduled-from-defaults", in_table("defaults", "mode = 'scheduled'"), "targets[0].schedule"),
    ("cron-range", in_target("mode = 'scheduled'\nschedule = '61 * * * *'"), "targets[0].schedule"),
    ("cron-fields", in_target("schedule = '* * * *'"), "targets[0].schedule: "),
    ("cron-seconds", in_target("schedule = '0 * * * * *'"), "targets[0].schedule: "),
    ("cron-defaults", in_table("defaults", "schedule = 'every day'"), "defaults.schedule"),
    (
        "orchestrator-empty",
        '[[targets]]\nname = "a"\npath = "a"\norchestrator = []\n',
        "targets[0].orchestrator: empty argv",
    ),
    (
        "orchestrator-string",
        in_target("orchestrator = 'python3 x.py'"),
        "targets[0].orchestrator: must be an array",
    ),
    (
        "orchestrator-placeholder",
        in_target("orchestrator = ['x', '--t={tagret}']"),
        "targets[0].orchestrator[1]: unknown placeholder",
    ),
    (
        "orchestrator-braces",
        in_target("orchestrator = ['x', '{target']"),
        "targets[0].orchestrator[1]",
    ),
    (
        "orchestrator-int",
        in_target("orchestrator = ['x', 3]"),
        "targets[0].orchestrator[1]: must be a string",
    ),
    (
        "scorer-placeholder",
        in_target("scorer = ['x', '{skill}']"),
        "targets[0].scorer[1]: unknown placeholder",
    ),
    (
        "defaults-placeholder",
        in_table("defaults", "orchestrator = ['x', '{target!r}']"),
        "defaults.orchestrator[1]",
    ),
    ("env-bad-name", in_target("env = { 'BAD-NAME' = 'x' }"), "targets[0].env: "),
    ("env-digit-name", in_target("env = { 1X = 'x' }"), "targets[0].env: "),
    ("env-int-value", in_target("env = { X = 1 }"), "targets[0].env.X: must be a string"),
    (
        "path-missing",
        '[[targets]]\nname = "a"\npath = "nope"\n',
        "targets[0].path: no such directory",
    ),
    ("path-is-file", '[[targets]]\nname = "a"\npath = "f"\n', "targets[0].path: not a directory"),
    ("path-absent", '[[targets]]\nname = "a"\n', "targets[0].path: required key missing"),
    ("path-empty", '[[targets]]\nname = "a"\npath = ""\n', "targets[0].path: must not be empty"),
    ("name-absent", '[[targets]]\npath = "a"\n', "targets[0].name: required key missing"),
    ("name-empty", TARGET_A.replace('"a"\npath', '""\npath'), "targets[0].name"),
    ("name-dotdot", TARGET_A.replace('"a"\npath', '".."\npath'), "targets[0].name"),
    ("name-slash", TARGET_A.replace('"a"\npath', '"a/b"\npath'), "targets[0].name"),
    ("name-control", TARGET_A.replace('"a"\npath', '"a\\u0007b"\npath'), "targets[0].name"),
    ("name-newline", TARGET_A.replace('"a"\npath', '"a\\nb"\npath'), "targets[0].name"),
    ("name-int", TARGET_A.replace('"a"\npath', "7\npath"), "targets[0].name: must be a string"),
    (
        "duplicate-name",
        TARGET_A + TARGET_A.replace('path = "a"', 'path = "b"'),
        "targets[1].name: duplicate target name",
    ),
    (
        "shared-state-root",
        TARGET_A + 'state_root = "s"\n' + TARGET_B + 'state_root = "s"\n',
        "targets[1].state_root: ",
    ),
    (
        "shared-state-root-resolved",
        TARGET_A + 'state_root = "x/s"\n' + TARGET_B + 'state_root = "x/../x/s/"\n',
        "targets[1].state_root: ",
    ),
    (
        "state-root-vs-default",
        in_table("daemon", "state_dir = 'st'") + TARGET_B + 'state_root = "st/a"\n',
        "targets[1].state_root: ",
    ),
    (
        "state-root-inside-another",
        TARGET_A + 'state_root = "x"\n' + TARGET_B + 'state_root = "x/in"\n',
        "targets[1].state_root: ",
    ),
    (
        "state-root-holding-another",
        TARGET_A + 'state_root = "x/in"\n' + TARGET_B + 'state_root = "x"\n',
        "are nested; state roots must not contain each other",
    ),
    ("state-root-file", TARGET_A + 'state_root = "f"\n', "targets[0].state_root: not a directory"),
    ("targets-table", '[targets]\nname = "a"\npath = "a"\n', "targets: must be an array of tables"),
    ("targets-string", 'targets = "a"\n', "targets: must be an array of tables"),
]


@pytest.mark.parametrize(
    ("content", "expected"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN]
)
def test_broken_config_is_one_line_naming_file_and_key(
    workdir: Path, content: str | bytes, expected: str
) -> None:
    """Every broken config raises ConfigError: one line, '<file>: <key path>: <problem>'."""
    path = write(workdir, content)
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"{path}: "), message
    assert expected in message, message
    assert "Traceback" not in message
    assert info.value.__cause__ is None


def test_broken_battery_is_large_enough() -> None:
    """The battery covers at least 35 distinct broken configs."""
    assert len({c[0] for c in BROKEN}) == len(BROKEN) >= 35


def test_missing_file_and_directory_are_rejected(workdir: Path) -> None:
    """A config path that does not exist, or is a directory, is a one-line error."""
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file$"):
        load(workdir / "nope.toml")
    with pytest.raises(ConfigError, match=r": is a directory"):
        load(workdir / "a")


def test_byte_order_mark_is_reported(workdir: Path) -> None:
    """A UTF-8 BOM gets a helpful message instead of a bare syntax error."""
    path = write(workdir, "\ufeff".encode() + TARGET_A.encode())
    with pytest.raises(ConfigError, match="byte-order mark"):
        load(path)


def test_spaces_quotes_and_unicode_names_are_fine(workdir: Path) -> None:
    """Target names are directory names: spaces, quotes and non-ASCII are allowed."""
    text = TARGET_A.replace('"a"\npath', '"my skill \\"v2\\""\npath') + TARGET_B.replace(
        '"b"\npath', '"résumé-✓"\npath'
    )
    cfg = load(write(workdir, "[daemon]\nstate_dir = 'st'\n" + text))
    assert [t.name for t in cfg.targets] == ['my skill "v2"', "résumé-✓"]
    assert cfg.targets[1].state_root.name == "résumé-✓"


def test_empty_orchestrator_is_fine_with_dry_run(workdir: Path) -> None:
    """dry_run = true needs no orchestrator argv."""
    cfg = load(write(workdir, TARGET_A + "orchestrator = []\nscorer = []\n"))
    assert cfg.targets[0].orchestrator == ()
    assert cfg.targets[0].scorer is None


@pytest.mark.parametrize(
    ("expr", "valid"),
    [
        ("17 */4 * * *", True),
        ("0 0 * * MON-FRI", True),
        ("*/15 9-17 1,15 jan-jun *", True),
        ("61 * * * *", False),
        ("* * * *", False),
        ("0 * * * * *", False),
        ("@daily", False),
        ("0 0 30 2 *", False),
        ("", False),
    ],
)
def test_validate_cron(expr: str, valid: bool) -> None:
    """validate_cron accepts 5-field cron expressions and explains the rest."""
    problem = validate_cron(expr)
    assert (problem is None) == valid, problem
    if problem is not None:
        assert "\n" not in problem


def test_example_config_loads_and_summary_mentions_every_target() -> None:
    """config.example.toml is valid as shipped; --check's summary lists each target."""
    cfg = load(REPO / "config.example.toml")
    assert len(cfg.targets) >= 2
    assert all(t.dry_run for t in cfg.targets)
    assert all(t.path.is_dir() and (t.path / "SKILL.md").is_file() for t in cfg.targets)
    assert cfg.daemon.state_dir == REPO / "state"
    assert any(t.weights and t.env for t in cfg.targets)
    summary = check_summary(cfg)
    assert str(cfg.path) in summary
    assert str(cfg.daemon.state_dir) in summary
    assert "$10.00" in summary
    for target in cfg.targets:
        line = next(x for x in summary.splitlines() if f"{target.name}:" in x)
        assert target.mode in line
        assert str(target.state_root) in line
        assert "dry_run" in line


def test_example_config_mentions_every_design_key() -> None:
    """Every key of DESIGN.md's Configuration block appears in the example (set or commented)."""
    text = (REPO / "config.example.toml").read_text()
    keys = [
        "state_dir", "max_concurrent_iterations", "shutdown_grace_seconds", "log_format",
        "log_level", "max_cost_usd", "cost_per_minute_usd", "mode", "max_iterations",
        "plateau_window", "min_improvement", "oscillation_window", "cooldown_minutes",
        "max_consecutive_errors", "iteration_timeout_minutes", "orchestrator", "scorer",
        "handoff_arg", "name", "path", "schedule", "weights", "env", "dry_run",
        "orchestrate.py", "self_improve.py",
    ]  # fmt: skip
    for key in keys:
        assert key in text, key


def test_summary_shows_schedule_cooldown_and_orchestrator(workdir: Path) -> None:
    """The --check summary shows a schedule, a cooldown and the orchestrator's argv[0..1]."""
    cfg = load(write(workdir, VALID))
    summary = check_summary(cfg)
    a_line, b_line = (next(x for x in summary.splitlines() if f" {n}:" in x) for n in "ab")
    assert "continuous" in a_line and "cooldown 0.5" in a_line and "python3 orch.py" in a_line
    assert "scheduled" in b_line and "17 */4 * * *" in b_line and "dry_run" in b_line
    assert "max_iterations 7" in a_line and "$3.00" in a_line
