"""The configuration's schema: pydantic models of `[daemon]`, `[budget]`, `[defaults]` and
`[[targets]]`, with strict types, ranges and the validators of single values."""

from __future__ import annotations

import json
import re
import string
import unicodedata
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from cronsim import CronSim, CronSimError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
)
from pydantic_settings import (
    BaseSettings,
    SettingsConfigDict,
)

from autoloop_daemon.config.alerts import AlertSettings, check_fractions
from autoloop_daemon.config.cluster import ClusterSettings
from autoloop_daemon.policy.deadline import check_deadline
from autoloop_daemon.policy.windows import BudgetWindow, load_zone, parse_window
from autoloop_daemon.vocab import Mode

ENV_PREFIX = "AUTOLOOPD_"
REFERENCE_ORCHESTRATOR: tuple[str, ...] = (
    "python3", "/opt/auto-improvement/skills/improvement-orchestrator/scripts/orchestrate.py",
    "--target", "{target}", "--state-root", "{state_root}", "--auto",
)  # fmt: skip
PLACEHOLDERS = frozenset({"target", "state_root", "iteration"})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

# Sane upper bounds: a year of minutes/seconds, a billion dollars, a million iterations.
Count = Annotated[int, Field(ge=1, le=1_000_000)]
Money = Annotated[float, Field(gt=0, le=1e9)]
Rate = Annotated[float, Field(ge=0, le=1e9)]
Minutes = Annotated[float, Field(ge=0, le=525_600)]
Seconds = Annotated[float, Field(ge=0, le=31_536_000)]


def check_template_arg(arg: str) -> str:
    """Return `arg` if it is a valid argv template element, else raise ValueError saying why."""
    if "\0" in arg:
        raise ValueError("contains a NUL byte")
    try:
        parts = list(string.Formatter().parse(arg))
    except ValueError as exc:
        raise ValueError(f"bad braces in {_quote(arg)}: {exc}") from None
    for _, name, spec, conversion in parts:
        if name is not None and (name not in PLACEHOLDERS or spec or conversion):
            raise ValueError(
                f"unknown placeholder in {_quote(arg)}: use {{target}}, {{state_root}} "
                "or {iteration} ({{ and }} for literal braces)"
            )
    return arg


def _check_host(host: str) -> str:
    if not host or len(host) > 200 or not host.isprintable():
        raise ValueError(f"{_quote(host)} is not a host id (1 to 200 printable characters)")
    return host


# Joiners shape emoji and some scripts; every other format character (bidi overrides and
# isolates, zero-width spaces, BOM) can make a name print as another one.
_JOINERS = frozenset("\u200c\u200d")


def _unprintable(c: str) -> bool:
    category = unicodedata.category(c)
    return category in ("Cc", "Zl", "Zp", "Cs") or (category == "Cf" and c not in _JOINERS)


def _check_name(name: str) -> str:
    if not name or name in (".", "..") or name.isspace():
        raise ValueError(f"{_quote(name)} is not a usable target name")
    if "/" in name or any(_unprintable(c) for c in name):
        raise ValueError(
            f"{_quote(name)}: a name may not contain '/', control, format (bidi) "
            "or line/paragraph separator characters"
        )
    if len(name.encode()) > 255:
        raise ValueError("longer than 255 bytes")
    return name


def _check_cron(expr: str) -> str:
    problem = validate_cron(expr)
    if problem is not None:
        raise ValueError(problem)
    return expr


def _check_oscillation(window: int) -> int:
    # 0 disables the check (as does any window < 2 in convergence.py); 1 is a likely typo.
    if window == 1:
        raise ValueError("must be 0 (disabled) or at least 2")
    return window


def _check_env(env: dict[str, str] | None) -> dict[str, str] | None:
    for key, value in (env or {}).items():
        if not _ENV_NAME.fullmatch(key):
            raise ValueError(f"{_quote(key)} is not a valid environment variable name")
        if "\0" in value:
            raise ValueError(f"{key}: value contains a NUL byte")
    return env


def _check_path_text(text: Any) -> Any:
    if isinstance(text, str) and not text.strip():
        raise ValueError("must not be empty")
    if isinstance(text, str) and "\0" in text:
        raise ValueError("contains a NUL byte")
    return text


Arg = Annotated[str, AfterValidator(check_template_arg)]
PathText = Annotated[str, BeforeValidator(_check_path_text)]


class DaemonSettings(BaseModel):
    """`[daemon]`: process-wide settings."""

    model_config = _STRICT

    state_dir: Annotated[Path, Field(strict=False), BeforeValidator(_check_path_text)] = Path(
        "/var/lib/autoloopd"
    )
    max_concurrent_iterations: Annotated[int, Field(ge=1, le=10_000)] = 4
    shutdown_grace_seconds: Seconds = 30.0
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # The control channel (config/control.py); control_socket defaults to state_dir's.
    control_socket: Annotated[Path | None, Field(strict=False)] = None
    http_listen: str | None = None
    http_token_file: Annotated[Path | None, Field(strict=False)] = None
    exit_when_idle: Literal["auto"] | bool = "auto"


def _check_window(text: str) -> str:
    parse_window(text, "UTC")
    return text


def _check_zone(name: str) -> str:
    load_zone(name)
    return name


class BudgetSettings(BaseModel):
    """`[budget]`: the money cap shared by every target (per window, with `window`)."""

    model_config = _STRICT

    max_cost_usd: Money = 100.0
    cost_per_minute_usd: Rate = 0.10
    window: Annotated[str, AfterValidator(_check_window)] | None = None
    window_timezone: Annotated[str, AfterValidator(_check_zone)] | None = None
    lifetime_max_cost_usd: Money | None = None
    allocation: Literal["fcfs", "gain_per_usd"] = "fcfs"
    # "soft": cap + what end-reported costs exceed their reservations; "hard": every run
    # reserves its worst case (max_iteration_cost_usd), so spend stays within the cap.
    guarantee: Literal["soft", "hard"] = "soft"
    # Soft thresholds: fractions of the (window's, and the lifetime) cap at which
    # `budget_threshold` alerts fire, for every [[alerts]] entry that sets no
    # budget_fractions of its own.
    alert_at: (
        Annotated[
            list[Annotated[float, Field(gt=0, le=10)]],
            Field(min_length=1),
            AfterValidator(check_fractions),
        ]
        | None
    ) = None

    def budget_window(self) -> BudgetWindow | None:
        """The window and its cap, or None without `window`."""
        if self.window is None:
            return None
        return BudgetWindow(parse_window(self.window, self.window_timezone), self.max_cost_usd)

    @property
    def lifetime_cap_usd(self) -> float:
        """The total cap: `max_cost_usd` without a window, else `lifetime_max_cost_usd`."""
        if self.window is None:
            return self.max_cost_usd
        return self.lifetime_max_cost_usd or float("inf")


class _TargetKeys(BaseModel):
    """Per-target keys, all optional: None means "inherit from the level below"."""

    model_config = _STRICT

    mode: Mode | None = None
    max_iterations: Count | None = None
    max_cost_usd: Money | None = None
    plateau_window: Annotated[int, Field(ge=0, le=1_000_000)] | None = None  # 0: off
    min_improvement: Annotated[float, Field(ge=0, le=1)] | None = None
    oscillation_window: (
        Annotated[int, Field(ge=0, le=1_000_000), AfterValidator(_check_oscillation)] | None
    ) = None
    cooldown_minutes: Minutes | None = None
    max_consecutive_errors: Count | None = None
    iteration_timeout_minutes: Annotated[float, Field(gt=0, le=525_600)] | None = None
    orchestrator: list[Arg] | None = None
    scorer: list[Arg] | None = None
    handoff_arg: Annotated[str, AfterValidator(check_template_arg)] | None = None
    sources: list[Annotated[str, BeforeValidator(_check_path_text)]] | None = None
    env: Annotated[dict[str, str], AfterValidator(_check_env)] | None = None
    weights: dict[str, Annotated[float, Field(ge=0, le=1e9)]] | None = None
    dry_run: bool | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    schedule: Annotated[str, AfterValidator(_check_cron)] | None = None
    cost_per_minute_usd: Rate | None = None
    estimated_cost_usd: Money | None = None
    max_iteration_cost_usd: Money | None = None
    term_grace_seconds: Seconds | None = None
    backoff_base_seconds: Seconds | None = None
    backoff_max_seconds: Seconds | None = None
    simulated_seconds: Seconds | None = None
    simulation: Literal["classic", "fleet"] | None = None
    min_gain_per_usd: Rate | None = None
    target_score: Annotated[float, Field(ge=0, le=1)] | None = None
    deadline: Annotated[str, AfterValidator(check_deadline)] | None = None
    restore_best_on_reject: bool | None = None
    review_pause: bool | None = None
    review_expire_hours: Annotated[float, Field(gt=0, le=87_600)] | None = None
    # Cluster mode: the host ids ([cluster] host_id) that may run the target (default: any
    # host that can see its directory).
    hosts: (
        Annotated[list[Annotated[str, AfterValidator(_check_host)]], Field(min_length=1)] | None
    ) = None


class _TargetTable(_TargetKeys):
    """One `[[targets]]` entry."""

    name: Annotated[str, AfterValidator(_check_name)]
    path: PathText
    state_root: PathText | None = None


class _FileSettings(BaseSettings):
    """The whole file; `load_config` binds a subclass to one path and one environment."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=True,  # `[Daemon]` is an unknown key; env names are normalised below
    )

    daemon: DaemonSettings = DaemonSettings()
    budget: BudgetSettings = BudgetSettings()
    defaults: _TargetKeys = _TargetKeys()
    targets: list[_TargetTable] = []
    alerts: list[AlertSettings] = []
    cluster: ClusterSettings = ClusterSettings()


def validate_cron(expr: str) -> str | None:
    """None when `expr` is a valid 5-field cron expression, else the problem in a few words."""
    if len(expr.split()) != 5:
        return f"{_quote(expr)} is not a cron expression (need 5 fields: min hour dom mon dow)"
    try:
        next(CronSim(expr, datetime(2000, 1, 1)))
    except (CronSimError, ValueError, IndexError, KeyError) as exc:
        return f"{_quote(expr)} is not a valid cron expression: {exc}".rstrip(": ")
    except StopIteration:
        return f"{_quote(expr)} never fires"
    return None


def _quote(text: str) -> str:
    """A TOML-style double-quoted string, escaped so it stays on one line."""
    return json.dumps(text, ensure_ascii=not text.isprintable())
