"""JSON text made by the C encoder: `json.dumps(obj, indent=2)`'s text, and the compact form.

`compact` is the one-line form the state files hold their values in (`, ` and `: ` between
items, NaN and Infinity refused, non-ASCII kept): `fsio.dumps_json` writes a state with it,
and a runner keeps its score_history as its items' text, encoded once (score_history.py).

The standard library encodes with `indent` in pure Python (its C encoder only runs without
one): 0.3 s for `autoloopd status --json` at 10,000 targets. Here a container whose values
are all scalars is one call of the C encoder with the newline and the indentation in its
item separator, and a list of such dicts (the status rows) is one call too: the only place
where `},` can meet a separator in its output is between two rows (a string value never
holds a raw newline), so the rows' indentation is set by one `str.replace`. Anything else
recurses; keys that are not strings (which `json` converts) are left to `json.dumps`.

`indented` is a value's text at its depth and `list_layout` a list's: the daemon's
`status --json` report keeps each row's text from one rendering to the next and lays the
rows' list out itself (control/report_rows.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import cache
from itertools import chain
from typing import Any

INDENT = "  "
# Between two items of a list in a state file (`fsio.dumps_json`'s layout); a runner's
# score_history is kept joined by it, to be written as it is (score_history.py).
LIST_ITEM_SEPARATOR = ",\n    "
# One encoder for every value: `json.dumps` with options builds a new one per call, which
# was most of a state's serialisation (a few hundred per checkpoint, 10,000 at shutdown).
_COMPACT = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(", ", ": "))
_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})


def compact(value: Any) -> str:
    """`value` as one line of JSON, as the state files write it (ValueError on NaN or
    Infinity)."""
    return _COMPACT.encode(value)


def dumps_indented(obj: Any) -> str:
    """The text of `json.dumps(obj, indent=2)`."""
    return _dump(obj, 0)


def indented(obj: Any, depth: int) -> str:
    """`obj`'s text as `dumps_indented` lays it out `depth` levels deep (an item of a list
    at depth `depth - 1`)."""
    return _dump(obj, depth)


def list_layout(depth: int) -> tuple[str, str, str]:
    """How `dumps_indented` lays out a non-empty list `depth` levels deep whose items are
    not all scalars: its opening, the separator between its items, its closing."""
    inner = "\n" + INDENT * (depth + 1)
    return "[" + inner, "," + inner, "\n" + INDENT * depth + "]"


def _dump(obj: Any, depth: int) -> str:
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        if any(type(key) is not str for key in obj):
            return json.dumps(obj, indent=len(INDENT)).replace("\n", "\n" + INDENT * depth)
        if _scalars(obj.values()):
            return _flat(obj, "{", "}", depth)
        inner = "\n" + INDENT * (depth + 1)
        items = [f"{json.dumps(key)}: {_dump(value, depth + 1)}" for key, value in obj.items()]
        return "{" + inner + ("," + inner).join(items) + "\n" + INDENT * depth + "}"
    if isinstance(obj, list | tuple):
        if not obj:
            return "[]"
        if _scalars(obj):
            return _flat(obj, "[", "]", depth)
        if _flat_rows(obj):
            return _rows(obj, depth)
        opening, separator, closing = list_layout(depth)
        return opening + separator.join([_dump(value, depth + 1) for value in obj]) + closing
    return json.dumps(obj)


def _scalars(values: Iterable[Any]) -> bool:
    return set(map(type, values)) <= _SCALAR_TYPES


def _flat_rows(rows: Sequence[Any]) -> bool:
    """True when every item is a non-empty dict of scalars with string keys."""
    # map and chain, not comprehensions: the type checks run in C (10,000 status rows of 22
    # fields: 3.4 ms against 14 ms)
    if set(map(type, rows)) != {dict} or not all(rows):
        return False
    keys = set(map(type, chain.from_iterable(rows)))
    return keys == {str} and _scalars(chain.from_iterable(map(dict.values, rows)))


def _flat(obj: Any, opening: str, closing: str, depth: int) -> str:
    body = _encoder(depth + 1).encode(obj)[1:-1]
    return opening + "\n" + INDENT * (depth + 1) + body + "\n" + INDENT * depth + closing


def _rows(rows: Sequence[dict[str, Any]], depth: int) -> str:
    outer, row, field = INDENT * depth, INDENT * (depth + 1), INDENT * (depth + 2)
    text = _encoder(depth + 2).encode(list(rows))[2:-2]
    text = text.replace("},\n" + field + "{", f"\n{row}}},\n{row}{{\n{field}")
    return f"[\n{row}{{\n{field}{text}\n{row}}}\n{outer}]"


@cache
def _encoder(depth: int) -> json.JSONEncoder:
    """The C encoder whose item separator starts a new line `depth` levels deep."""
    return json.JSONEncoder(separators=(",\n" + INDENT * depth, ": "))
