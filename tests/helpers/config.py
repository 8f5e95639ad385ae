"""The one writer of daemon configs (plain dicts to TOML, no third-party writer) and the small
valid config texts that the config tests break."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# A minimal valid target (for a config file next to directories `a` and `b`); the broken
# configs of the tests append to or replace parts of it.
TARGET_A = '[[targets]]\nname = "a"\npath = "a"\ndry_run = true\n'
TARGET_B = '[[targets]]\nname = "b"\npath = "b"\ndry_run = true\n'


def in_table(table: str, body: str) -> str:
    """A valid config (TARGET_A) with `body` in its [`table`] table."""
    return f"[{table}]\n{body}\n{TARGET_A}"


def in_target(body: str) -> str:
    """A valid config with `body` appended to its only target's table."""
    return f"{TARGET_A}{body}\n"


def toml_string(text: str) -> str:
    """A TOML basic string. JSON's escapes are TOML's; DEL, which JSON leaves raw and TOML
    forbids raw, is escaped too. Non-ASCII stays as it is (a `\\u` escape of a character
    outside the BMP would be a surrogate pair, which TOML refuses)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    """`value` (bool, int, finite float, str, Path, sequence, mapping) as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        assert math.isfinite(value), f"TOML has no {value!r} here"
        return repr(value)
    if isinstance(value, str | Path):
        return toml_string(str(value))
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        pairs = ", ".join(f"{toml_string(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + pairs + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_table(header: str, table: Mapping[str, Any]) -> list[str]:
    """The lines of one table (`[name]` or `[[targets]]`), then a blank line."""
    lines = [header]
    lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    return [*lines, ""]


def write_config(
    path: Path,
    *,
    targets: Sequence[Mapping[str, Any]],
    daemon: Mapping[str, Any] | None = None,
    budget: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    alerts: Sequence[Mapping[str, Any]] = (),
    cluster: Mapping[str, Any] | None = None,
) -> Path:
    """Write a daemon config; `daemon` gets `log_format = "json"` unless it says otherwise.

    The file is replaced atomically, so a daemon reloading it never reads half a file.
    """
    lines = toml_table("[daemon]", {"log_format": "json", **(daemon or {})})
    if budget:
        lines += toml_table("[budget]", budget)
    if defaults:
        lines += toml_table("[defaults]", defaults)
    if cluster:
        lines += toml_table("[cluster]", cluster)
    for target in targets:
        lines += toml_table("[[targets]]", target)
    for alert in alerts:
        lines += toml_table("[[alerts]]", alert)
    tmp = path.with_name(path.name + ".writing")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)
    return path
