"""The TOML configuration: pydantic-settings models, loading, merging and validation.

`load_config` reads one TOML file through pydantic-settings (sources, highest first: init,
`AUTOLOOPD_*` environment variables with `__` for nesting, the TOML file), validates every
key strictly (unknown keys, wrong types, bools for numbers, NaN/inf and out-of-range limits
are all errors) and resolves each `[[targets]]` entry into a `TargetSpec`: TargetSpec's
defaults (daemon flavour: continuous mode, the reference orchestrator), then `[defaults]`,
then the target's own table. Any problem is one `ConfigError` line:
`<file>: <key.path>: <problem>`.

Conventions a user may rely on:
- `oscillation_window = 0` disables the oscillation check; otherwise it must be >= 2.
- `handoff_arg = ""` appends no handoff; `scorer = []` means no scorer.
- orchestrator/scorer elements are `str.format` templates: only `{target}`,
  `{state_root}` and `{iteration}` are allowed (`{{`/`}}` are literal braces).
- Relative paths (`state_dir`, `path`, `state_root`) resolve against the directory of the
  config file (after following symlinks); `~` expands to the home directory.
- Environment keys are matched case-insensitively for the known structure
  (`AUTOLOOPD_DEFAULTS__ENV__LLM_MODEL` sets `defaults.env.LLM_MODEL`); lists are JSON.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import string
import tomllib
import types
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from cronsim import CronSim, CronSimError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)
from pydantic_settings.sources.utils import parse_env_vars

from autoloop_daemon.config.alerts import AlertSettings
from autoloop_daemon.config.control import check_control
from autoloop_daemon.exceptions import ConfigError
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.storage.files.lock import resolve_state_root
from autoloop_daemon.vocab import Mode

__all__ = [
    "REFERENCE_ORCHESTRATOR",
    "AppConfig",
    "BudgetSettings",
    "DaemonSettings",
    "check_summary",
    "load_config",
    "validate_cron",
]

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


def _check_name(name: str) -> str:
    if not name or name in (".", ".."):
        raise ValueError(f"{_quote(name)} is not a usable target name")
    if "/" in name or any(unicodedata.category(c) == "Cc" for c in name):
        raise ValueError(f"{_quote(name)}: a name may not contain '/' or control characters")
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


class BudgetSettings(BaseModel):
    """`[budget]`: the money cap shared by every target."""

    model_config = _STRICT

    max_cost_usd: Money = 100.0
    cost_per_minute_usd: Rate = 0.10


class _TargetKeys(BaseModel):
    """Per-target keys, all optional: None means "inherit from the level below"."""

    model_config = _STRICT

    mode: Mode | None = None
    max_iterations: Count | None = None
    max_cost_usd: Money | None = None
    plateau_window: Count | None = None
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


def _inner_type(annotation: Any) -> Any:
    """`X | None` -> X, `Annotated[X, ...]` -> X."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, types.UnionType):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        else:
            return annotation


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (or holds a list of), if any."""
    inner = _inner_type(annotation)
    if get_origin(inner) is list:
        inner = _inner_type(get_args(inner)[0])
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def _coerce_env(value: Any, annotation: Any) -> Any:
    """Convert environment strings to the int/float/bool the strict models expect."""
    inner = _inner_type(annotation)
    model = _model_of(inner)
    if isinstance(value, dict) and model is not None:
        fields = model.model_fields
        return {
            k: _coerce_env(v, fields[k].annotation) if k in fields else v for k, v in value.items()
        }
    if isinstance(value, dict) and get_origin(inner) is dict:
        return {k: _coerce_env(v, get_args(inner)[1]) for k, v in value.items()}
    if isinstance(value, str) and inner in (int, float, bool):
        try:
            return TypeAdapter(inner).validate_python(value)
        except ValidationError:
            return value  # the strict validation then reports it with its key path
    return value


def _normalise_env_name(name: str) -> str:
    """`AUTOLOOPD_DEFAULTS__ENV__LLM_MODEL` -> `AUTOLOOPD_defaults__env__LLM_MODEL`."""
    parts = name[len(ENV_PREFIX) :].split("__")
    model: type[BaseModel] | None = _FileSettings
    for i, part in enumerate(parts):
        if model is None:
            break  # inside a free-form table (env, weights): keep the user's case
        parts[i] = part.lower()
        field = model.model_fields.get(parts[i])
        model = _model_of(field.annotation) if field is not None else None
    return ENV_PREFIX + "__".join(parts)


def _config_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        _normalise_env_name(k): v for k, v in environ.items() if k.upper().startswith(ENV_PREFIX)
    }


class _EnvSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = _config_env(environ)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = _coerce_env(super().__call__(), self.settings_cls)
        return values


def _bind(path: Path, environ: Mapping[str, str]) -> type[_FileSettings]:
    class _Bound(_FileSettings):
        model_config = SettingsConfigDict(toml_file=path)

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (
                init_settings,
                _EnvSource(settings_cls, environ),
                TomlConfigSettingsSource(settings_cls),
            )

    return _Bound


@dataclass(frozen=True)
class AppConfig:
    """A validated configuration: every path absolute, every target fully merged."""

    path: Path
    daemon: DaemonSettings
    budget: BudgetSettings
    targets: tuple[TargetSpec, ...]
    alerts: tuple[AlertSettings, ...] = ()


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


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> AppConfig:
    """Read, merge and validate; raise ConfigError with ONE line: '<file>: <key.path>: <problem>'.

    `environ` (default `os.environ`) supplies the `AUTOLOOPD_*` overrides.
    """
    env = os.environ if environ is None else environ
    try:
        return _load(Path(path), str(path), env)
    except ConfigError as exc:
        raise ConfigError(" ".join(str(exc).split("\n"))) from None


def _load(path: Path, shown: str, env: Mapping[str, str]) -> AppConfig:
    empty = _check_file(path, shown)
    try:
        settings = _bind(path, env)()
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_syntax_error(shown, exc)) from None
    except ValidationError as exc:
        raise ConfigError(f"{shown}: {_render_errors(exc, env)}") from None
    except SettingsError as exc:
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigError(f"{shown}: environment: {exc}{cause}") from None
    except (OSError, UnicodeDecodeError) as exc:  # the file changed under us
        raise ConfigError(f"{shown}: cannot read: {exc}") from None

    cfg_path = path.resolve()
    base = cfg_path.parent
    state_dir = _resolve(settings.daemon.state_dir, base, shown, "daemon.state_dir")
    if state_dir.exists() and not state_dir.is_dir():
        raise ConfigError(f"{shown}: daemon.state_dir: not a directory: {state_dir}")
    if not settings.targets:
        hint = " (the file is empty)" if empty else ""
        raise ConfigError(f"{shown}: targets: no [[targets]] defined{hint}")
    d = settings.daemon
    sock, token_file = check_control(
        control_socket=d.control_socket,
        http_listen=d.http_listen,
        http_token_file=d.http_token_file,
        base=base,
        shown=shown,
    )
    daemon = d.model_copy(
        update={"state_dir": state_dir, "control_socket": sock, "http_token_file": token_file}
    )
    targets = _build_targets(settings, base, state_dir, shown)
    return AppConfig(
        path=cfg_path,
        daemon=daemon,
        budget=settings.budget,
        targets=targets,
        alerts=tuple(settings.alerts),
    )


def _check_file(path: Path, shown: str) -> bool:
    """Reject what is not a UTF-8 text file; True when the file is blank."""
    if path.is_dir():
        raise ConfigError(f"{shown}: is a directory, not a config file")
    if not path.is_file():
        raise ConfigError(f"{shown}: no such file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    if b"\0" in raw:
        raise ConfigError(f"{shown}: binary file (NUL byte at offset {raw.index(0)}), not TOML")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{shown}: line {line}: not valid UTF-8 (byte {exc.start})") from None
    if text.startswith("\ufeff"):
        raise ConfigError(f"{shown}: line 1: starts with a byte-order mark; save without BOM")
    return not text.strip()


def _syntax_error(shown: str, exc: tomllib.TOMLDecodeError) -> str:
    msg = str(exc)
    match = re.fullmatch(r"(.*) \(at (line \d+, column \d+|end of document)\)", msg, re.S)
    if match is None:
        return f"{shown}: TOML syntax error: {msg}"
    problem = match.group(1)
    return f"{shown}: {match.group(2)}: TOML syntax error: {problem[:1].lower()}{problem[1:]}"


def _resolve(
    value: Path | str, base: Path, shown: str, key: str, *, keep_last: bool = False
) -> Path:
    try:
        path = Path(value).expanduser()
        if keep_last:  # a state root that is a symlink is refused at start, not followed
            return resolve_state_root(path, base)
        return (base / path).resolve()  # an absolute `path` replaces `base`
    except (RuntimeError, OSError, ValueError) as exc:
        raise ConfigError(f"{shown}: {key}: cannot resolve {_quote(str(value))}: {exc}") from None


_SPEC_DEFAULTS: dict[str, Any] = {
    **{
        f.name: f.default
        for f in dataclasses.fields(TargetSpec)
        if f.default is not dataclasses.MISSING
    },
    "mode": "continuous",
    "orchestrator": REFERENCE_ORCHESTRATOR,
    "scorer": None,
}


def _build_targets(
    settings: _FileSettings, base: Path, state_dir: Path, shown: str
) -> tuple[TargetSpec, ...]:
    inherited = {
        **_SPEC_DEFAULTS,
        "cost_per_minute_usd": settings.budget.cost_per_minute_usd,
        **settings.defaults.model_dump(exclude_none=True),
    }
    names: dict[str, int] = {}
    roots: dict[Path, int] = {}
    specs: list[TargetSpec] = []
    for i, table in enumerate(settings.targets):
        key = f"targets[{i}]"
        own = table.model_dump(exclude_none=True, exclude={"name", "path", "state_root"})
        merged = {**inherited, **own}
        if table.name in names:
            raise ConfigError(
                f"{shown}: {key}.name: duplicate target name {_quote(table.name)} "
                f"(also targets[{names[table.name]}])"
            )
        names[table.name] = i
        path = _resolve(table.path, base, shown, f"{key}.path")
        if not path.is_dir():
            problem = "not a directory" if path.exists() else "no such directory"
            raise ConfigError(f"{shown}: {key}.path: {problem}: {path}")
        raw_root = table.state_root if table.state_root is not None else state_dir / table.name
        root = _resolve(raw_root, base, shown, f"{key}.state_root", keep_last=True)
        if root.exists() and not root.is_dir():
            raise ConfigError(f"{shown}: {key}.state_root: not a directory: {root}")
        if root in roots:
            raise ConfigError(
                f"{shown}: {key}.state_root: {root} is already the state root of "
                f"targets[{roots[root]}]"
            )
        if state_dir.is_relative_to(root):
            raise ConfigError(
                f"{shown}: {key}.state_root: {root} would hold daemon.state_dir ({state_dir}); "
                "give the target a state root of its own"
            )
        for other, j in roots.items():
            if root.is_relative_to(other) or other.is_relative_to(root):
                raise ConfigError(
                    f"{shown}: {key}.state_root: {root} and the state root of targets[{j}] "
                    f"({other}) are nested; state roots must not contain each other"
                )
        roots[root] = i
        late = _merged_problem(merged)
        if late is not None:
            raise ConfigError(f"{shown}: {key}.{late}")
        merged.update(
            orchestrator=tuple(merged["orchestrator"]),
            scorer=tuple(merged["scorer"]) if merged["scorer"] else None,
            handoff_arg=merged["handoff_arg"] or None,
            sources=tuple(merged["sources"]),
            env=tuple(sorted(dict(merged["env"]).items())),
            weights=tuple(sorted(dict(merged["weights"]).items())),
        )
        specs.append(TargetSpec(name=table.name, path=path, state_root=root, **merged))
    return tuple(specs)


def _merged_problem(merged: Mapping[str, Any]) -> str | None:
    """Checks that need the merged values: '<key>: <problem>' or None."""
    if merged["mode"] == "scheduled" and not merged["schedule"]:
        return 'schedule: required when mode = "scheduled"'
    if not merged["orchestrator"] and not merged["dry_run"]:
        return "orchestrator: empty argv (give a command, or set dry_run = true)"
    if merged["orchestrator"] and not merged["orchestrator"][0]:
        return "orchestrator[0]: the program must not be empty"
    if merged["backoff_max_seconds"] < merged["backoff_base_seconds"]:
        return "backoff_max_seconds: must be at least backoff_base_seconds"
    return None


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key missing",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "path_type": "must be a string (a path)",
    "list_type": "must be an array",
    "dict_type": "must be a table",
    "too_short": "must not be empty",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
}


def _render_errors(exc: ValidationError, environ: Mapping[str, str]) -> str:
    """The first error as '<key.path>: <problem>', plus '(and N more)'."""
    errors = exc.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    kind, ctx = first["type"], first.get("ctx") or {}
    if loc == ("targets",) and kind == "list_type":
        problem = "must be an array of tables ([[targets]])"
    elif kind == "extra_forbidden":
        problem = "unknown key" + _suggestion(loc)
    elif kind in _MESSAGES:
        problem = _MESSAGES[kind]
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        words = {"greater_than": "greater than", "greater_than_equal": "at least",
                 "less_than": "less than", "less_than_equal": "at most"}  # fmt: skip
        problem = f"must be {words[kind]} {_number(next(iter(ctx.values())))}"
    elif kind == "literal_error":
        problem = f"must be one of {ctx.get('expected', '?')}"
    else:
        msg = str(first["msg"]).removeprefix("Value error, ")
        problem = msg[:1].lower() + msg[1:]
    shown = _show_value(first.get("input"))
    if shown and kind not in ("extra_forbidden", "missing", "value_error"):
        problem += f" (got {shown})"
    source = _env_source(loc, environ)
    if source:
        problem += f" (from {source})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{_key_path(loc)}: {problem}{more}"


def _suggestion(loc: Sequence[int | str]) -> str:
    """' (did you mean ...?)' for a misspelt key, or a hint where the key belongs."""
    model: type[BaseModel] | None = _FileSettings
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # a list element: _model_of already looked inside the list
        field = model.model_fields.get(part) if model is not None else None
        model = _model_of(field.annotation) if field is not None else None
    if model is None:
        return ""
    if model is _TargetKeys and loc[-1] in _TargetTable.model_fields:
        return " (name, path and state_root belong in [[targets]])"
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _key_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + (part if _BARE_KEY.fullmatch(part) else _quote(part))
    return out or "(top level)"


def _env_source(loc: Sequence[int | str], environ: Mapping[str, str]) -> str | None:
    """The AUTOLOOPD_ variable that supplied the value at `loc`, if one did."""
    for name in environ:
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = tuple(_normalise_env_name(name)[len(ENV_PREFIX) :].split("__"))
        if tuple(str(p) for p in loc[: len(parts)]) == parts:
            return name
    return None


def _quote(text: str) -> str:
    """A TOML-style double-quoted string, escaped so it stays on one line."""
    return json.dumps(text, ensure_ascii=not text.isprintable())


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def _show_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
    if isinstance(value, str):
        return _quote(value if len(value) <= 60 else value[:57] + "...")
    return None


def check_summary(cfg: AppConfig) -> str:
    """Human multi-line summary for `autoloopd --config F --check`: file, state_dir, budget
    cap, concurrency, then one line per target."""
    lines = [
        f"config:      {cfg.path}",
        f"state_dir:   {cfg.daemon.state_dir}",
        f"budget:      ${cfg.budget.max_cost_usd:,.2f} shared cap "
        f"(${cfg.budget.cost_per_minute_usd:.2f}/min estimate when unreported)",
        f"concurrency: {cfg.daemon.max_concurrent_iterations} iteration(s) at once, "
        f"{cfg.daemon.shutdown_grace_seconds:g}s shutdown grace",
        f"targets:     {len(cfg.targets)}",
    ]
    for i, alert in enumerate(cfg.alerts):
        via = " and ".join(
            w for w, on in (("command", alert.command), ("url", alert.url)) if on is not None
        )
        lines.append(f"alerts[{i}]:   {', '.join(alert.events)} via {via}")
    for t in cfg.targets:
        if t.mode == "scheduled":
            timing = f"schedule {_quote(t.schedule or '')}"
        elif t.mode == "continuous":
            timing = f"cooldown {t.cooldown_minutes:g} min"
        else:
            timing = "no cooldown"
        runner = (
            f"dry_run (simulator, seed {t.seed})"
            if t.dry_run
            else "orchestrator " + " ".join(t.orchestrator[:2])
        )
        lines.append(
            f"  - {t.name}: {t.mode}, path {t.path}, state {t.state_root}, "
            f"max_iterations {t.max_iterations}, max_cost ${t.max_cost_usd:,.2f}, "
            f"{timing}, {runner}"
        )
    return "\n".join(lines)
