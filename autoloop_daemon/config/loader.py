"""The TOML configuration: loading one file, resolving paths, merging and validating it.

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
import errno
import functools
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)
from pydantic_settings import (
    SettingsError,
)

from autoloop_daemon.config.alerts import AlertSettings
from autoloop_daemon.config.cluster import ClusterSettings
from autoloop_daemon.config.control import check_control
from autoloop_daemon.config.environment import _bind
from autoloop_daemon.config.errors import _render_errors
from autoloop_daemon.config.settings import (
    REFERENCE_ORCHESTRATOR,
    BudgetSettings,
    DaemonSettings,
    _FileSettings,
    _quote,
    validate_cron,
)
from autoloop_daemon.exceptions import ConfigError
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.policy.live_cost import STOP_LATENCY_S
from autoloop_daemon.policy.windows import CALENDAR
from autoloop_daemon.storage.files.lock import resolve_state_root

__all__ = [
    "REFERENCE_ORCHESTRATOR",
    "AppConfig",
    "BudgetSettings",
    "DaemonSettings",
    "load_config",
    "validate_cron",
]


@dataclass(frozen=True)
class AppConfig:
    """A validated configuration: every path absolute, every target fully merged."""

    path: Path
    daemon: DaemonSettings
    budget: BudgetSettings
    targets: tuple[TargetSpec, ...]
    alerts: tuple[AlertSettings, ...] = ()
    cluster: ClusterSettings = field(default_factory=ClusterSettings)


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
    budget = settings.budget
    if settings.cluster.enabled and budget.window in CALENDAR and not budget.window_timezone:
        raise ConfigError(
            f"{shown}: budget.window_timezone: required in cluster mode with a calendar "
            f"window ({budget.window!r}): every host must agree on when a window opens"
        )
    targets = _build_targets(settings, base, state_dir, shown)
    return AppConfig(
        path=cfg_path,
        daemon=daemon,
        budget=settings.budget,
        targets=targets,
        alerts=tuple(
            a
            if "budget_fractions" in a.model_fields_set or settings.budget.alert_at is None
            else a.model_copy(update={"budget_fractions": settings.budget.alert_at})
            for a in settings.alerts
        ),
        cluster=settings.cluster,
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
    value: Path | str,
    base: Path,
    shown: str,
    key: str,
    *,
    keep_last: bool = False,
    folders: dict[str, str] | None = None,
) -> Path:
    """`value` made absolute against `base` and resolved (`keep_last`: all but its last
    component, as `resolve_state_root`). `folders` caches resolved parent directories across
    calls: 10,000 targets in one directory resolve it once, not once each (~8 `lstat`s)."""
    try:
        if folders is not None:
            simple = _resolve_simple(os.fspath(value), str(base), keep_last, folders)
            if simple is not None:
                return simple
        path = Path(value).expanduser()
        if keep_last:  # a state root that is a symlink is refused at start, not followed
            return resolve_state_root(path, base)
        return (base / path).resolve()  # an absolute `path` replaces `base`
    except (RuntimeError, OSError, ValueError) as exc:
        raise ConfigError(f"{shown}: {key}: cannot resolve {_quote(str(value))}: {exc}") from None


def _resolve_simple(text: str, base: str, keep_last: bool, folders: dict[str, str]) -> Path | None:
    """`_resolve` of a plain path (no `~`, `.`, `..`, `//` or trailing `/`), on strings:
    its folder resolved once per folder, one `Path` made. pathlib's parsing was most of a
    10,000-target config's load (issue 24: READY). None for any other path, and for a
    target directory that is a link (the caller resolves those in full)."""
    absolute = text if text.startswith("/") else f"{base}/{text}"
    if (
        text.startswith("~")
        or "//" in absolute
        or "/./" in absolute
        or "/../" in absolute
        or absolute.endswith(("/", "/.", "/.."))
    ):
        return None
    folder, name = absolute.rsplit("/", 1)
    real = folders.get(folder)
    if real is None:
        real = folders[folder] = str(Path(folder or "/").resolve())
    joined = f"{real}/{name}" if real != "/" else f"/{name}"
    if not keep_last and _kind(joined, follow=False) == "link":
        return None
    return Path(joined)


def _kind(path: str | Path, *, follow: bool = True) -> str | None:
    """What is at `path`: a "dir", a "link" (only when not `follow`ing links), "other", or
    None when nothing is there (as `Path.exists`: also a parent that is no directory, or a
    link loop). One stat where `exists()` and `is_dir()` made two. OSError otherwise."""
    try:
        mode = os.stat(path).st_mode if follow else os.lstat(path).st_mode
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return None
        raise
    if stat.S_ISDIR(mode):
        return "dir"
    return "link" if stat.S_ISLNK(mode) else "other"


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
        "hard_cap": settings.budget.guarantee == "hard",
        **settings.defaults.model_dump(exclude_none=True),
    }
    names: dict[str, int] = {}
    # Roots and their parents as strings: hashing and walking a `Path` costs several times
    # more, and every root is absolute and normalised (resolved) already.
    roots: dict[str, int] = {}
    inside: dict[str, int] = {}  # every parent of a state root -> the first such root
    folders: dict[str, str] = {}  # resolved parent directories (see `_resolve`)
    dir_text = str(state_dir)
    holds_state_dir = {dir_text, *_parents(dir_text)}  # a root here holds it
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
        path = _resolve(table.path, base, shown, f"{key}.path", folders=folders)
        kind = _kind_or_error(path, f"{shown}: {key}.path")
        # In cluster mode a host may not see every target's directory: it never claims those.
        if kind != "dir" and (kind is not None or not settings.cluster.enabled):
            problem = "not a directory" if kind is not None else "no such directory"
            raise ConfigError(f"{shown}: {key}.path: {problem}: {path}")
        raw_root = table.state_root if table.state_root is not None else f"{dir_text}/{table.name}"
        root = _resolve(raw_root, base, shown, f"{key}.state_root", keep_last=True, folders=folders)
        if _kind_or_error(root, f"{shown}: {key}.state_root") not in ("dir", None):
            raise ConfigError(f"{shown}: {key}.state_root: not a directory: {root}")
        where = f"{shown}: {key}.state_root"
        _claim_root(root, i, where, roots, inside, (state_dir, holds_state_dir), specs)
        late = _merged_problem(merged)
        if late is not None:
            raise ConfigError(f"{shown}: {key}.{late}")
        specs.append(TargetSpec(name=table.name, path=path, state_root=root, **_frozen(merged)))
    return tuple(specs)


def _kind_or_error(path: Path, where: str) -> str | None:
    """`_kind(path)`, or ConfigError at `where` when it cannot be known (no permission)."""
    try:
        return _kind(path)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot look at {path}: {exc.strerror or exc}") from None


def _frozen(merged: dict[str, Any]) -> dict[str, Any]:
    """A target's merged values as `TargetSpec` holds them (tuples, sorted pairs)."""
    return {
        **merged,
        "orchestrator": tuple(merged["orchestrator"]),
        "scorer": tuple(merged["scorer"]) if merged["scorer"] else None,
        "handoff_arg": merged["handoff_arg"] or None,
        "sources": None if merged["sources"] is None else tuple(merged["sources"]),
        "env": tuple(sorted(dict(merged["env"]).items())),
        "weights": tuple(sorted(dict(merged["weights"]).items())),
        "hosts": tuple(merged["hosts"]),
    }


def _claim_root(
    root: Path,
    i: int,
    where: str,
    roots: dict[str, int],
    inside: dict[str, int],
    state_dir: tuple[Path, set[str]],
    specs: list[TargetSpec],
) -> None:
    """Record target `i`'s state root; ConfigError (at `where`) when it repeats another's,
    holds the daemon's state_dir (given with the set of it and its parents), or nests with
    another root."""
    root_text = str(root)
    if root_text in roots:
        raise ConfigError(
            f"{where}: {root} is already the state root of targets[{roots[root_text]}]"
        )
    parents = _parents(root_text)
    if root_text in state_dir[1]:
        raise ConfigError(
            f"{where}: {root} would hold daemon.state_dir ({state_dir[0]}); "
            "give the target a state root of its own"
        )
    # Nested roots, found through each root's parents: O(depth) per target, not O(n).
    outer = next((p for p in parents if p in roots), None)
    j = roots[outer] if outer is not None else inside.get(root_text)
    if j is not None:
        other = outer if outer is not None else specs[j].state_root
        raise ConfigError(
            f"{where}: {root} and the state root of targets[{j}] "
            f"({other}) are nested; state roots must not contain each other"
        )
    roots[root_text] = i
    for parent in parents:
        inside.setdefault(parent, i)


def _parents(path: str) -> list[str]:
    """The ancestors of the absolute, normalised `path`, nearest first (`Path.parents`)."""
    parent = os.path.dirname(path)
    return [] if parent == path else [parent, *_ancestors(parent)]


@functools.lru_cache(maxsize=256)
def _ancestors(path: str) -> tuple[str, ...]:
    """`_parents` of a folder, kept: 10,000 state roots in one folder walk it once."""
    parent = os.path.dirname(path)
    return () if parent == path else (parent, *_ancestors(parent))


def _merged_problem(merged: Mapping[str, Any]) -> str | None:
    """Checks that need the merged values: '<key>: <problem>' or None."""
    if merged["mode"] == "scheduled" and not merged["schedule"]:
        return 'schedule: required when mode = "scheduled"'
    if not merged["orchestrator"] and not merged["dry_run"]:
        return "orchestrator: empty argv (give a command, or set dry_run = true)"
    if merged["orchestrator"] and not merged["orchestrator"][0]:
        return "orchestrator[0]: the program must not be empty"
    if merged["hard_cap"]:
        hard = _hard_cap_problem(merged)
        if hard is not None:
            return hard
    if merged["backoff_max_seconds"] < merged["backoff_base_seconds"]:
        return "backoff_max_seconds: must be at least backoff_base_seconds"
    return None


def _hard_cap_problem(merged: Mapping[str, Any]) -> str | None:
    """`guarantee = "hard"` needs a worst case per run that a wall-time meter can keep."""
    limit = merged.get("max_iteration_cost_usd")
    if limit is None:
        return (
            'max_iteration_cost_usd: required with [budget] guarantee = "hard" (the worst '
            "case each run reserves)"
        )
    rate = 0.0 if merged["dry_run"] else merged["cost_per_minute_usd"] / 60.0
    stopping_usd = rate * (merged["term_grace_seconds"] + STOP_LATENCY_S)
    if stopping_usd > 0 and limit <= stopping_usd:
        return (
            f"max_iteration_cost_usd: ${limit:g} does not cover stopping a run (its "
            f"term_grace_seconds plus {STOP_LATENCY_S:g} s at cost_per_minute_usd: "
            f'${stopping_usd:g}) under guarantee = "hard"'
        )
    return None
