"""A validation error as ONE readable line: the key path, the problem, the value, and which
environment variable supplied it (if one did)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import (
    BaseModel,
    ValidationError,
)

from autoloop_daemon.config.environment import _model_of, _normalise_env_name
from autoloop_daemon.config.settings import (
    _BARE_KEY,
    ENV_PREFIX,
    _FileSettings,
    _quote,
    _TargetKeys,
    _TargetTable,
)

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
