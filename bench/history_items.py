"""What a target's score_history costs a long-running daemon: memory per item, and the state
checkpoint's encoding with 0, 5 and 50 items (a runner keeps the newest 50).

    .venv/bin/python bench/history_items.py [--quick] [--rounds N]

Measured in-process on the real code, three ways of holding the same history, interleaved:
a runner's `ScoreHistory` (its items' text as one string, score_history.py), one
`ScoreItem` per item (each the file's object as its JSON text: what a runner kept before),
and plain dicts (what a state read from a file holds, and what a runner kept before that):

* memory per item (tracemalloc, 5,000 items: 100 histories of 50, each grown one item at a
  time as a runner grows it), with one scored dimension (the benchmarks' echo
  orchestrator) and with six; a dict item counts the scores dict it keeps;
* `encode_state` (the bytes of one checkpoint; a run makes two) with 0, 5 and 50 items of
  six dimensions, µs per call, min/median/max over the rounds.

At 1,000 targets the memory figure times 50,000 is what the histories hold once every
target has run 50 iterations, which `bench/check.py`'s busy windows (a few iterations per
target) never reach.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from typing import Any

import common  # first: puts the repository on sys.path

from autoloop_daemon.policy.progress import SCORE_HISTORY_LIMIT
from autoloop_daemon.score_history import EMPTY_HISTORY, ScoreItem, item_text
from autoloop_daemon.storage.files.state_file import encode_state
from autoloop_daemon.target_state import TargetState

ITEMS_FOR_MEMORY = 5_000


def _scores(dims: int, i: int) -> dict[str, float]:
    """A fresh scores dict, as the orchestrator's parsed result line gives each run one."""
    text = json.dumps({f"dimension_{k}": round(0.5 + k / 100 + i * 1e-6, 6) for k in range(dims)})
    loaded: dict[str, float] = json.loads(text)
    return loaded


def _fields(dims: int, i: int) -> tuple[Any, ...]:
    timestamp = f"2026-12-06T23:{i // 60 % 60:02d}:{i % 60:02d}.123456+00:00"
    return (1000 + i, 0.71234 + i * 1e-9, "keep", _scores(dims, i), timestamp)


def _as_dict(fields: tuple[Any, ...]) -> dict[str, Any]:
    keys = ("iteration", "weighted_score", "decision", "scores", "timestamp")
    return dict(zip(keys, fields, strict=True))


FORMS = ("history", "score_item", "plain_dict")


def _held(form: str, fields: list[tuple[Any, ...]]) -> list[Any]:
    """`fields` held the `form` way: histories of 50 grown one item at a time, or lists."""
    if form == "history":
        histories = []
        for start in range(0, len(fields), SCORE_HISTORY_LIMIT):
            history = EMPTY_HISTORY
            for f in fields[start : start + SCORE_HISTORY_LIMIT]:
                history = history.appended([(f[0], item_text(*f))], SCORE_HISTORY_LIMIT)
            histories.append(history)
        return histories
    if form == "score_item":
        return [ScoreItem(*f) for f in fields]
    return [_as_dict(f) for f in fields]


def bytes_per_item(dims: int, form: str) -> float:
    """Traced bytes per item of `ITEMS_FOR_MEMORY` items (a dict item's scores included)."""
    tracemalloc.start()
    fields = [_fields(dims, i) for i in range(ITEMS_FOR_MEMORY)]
    items = _held(form, fields)
    del fields  # what is left is what the items keep
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del items
    return used / ITEMS_FOR_MEMORY


def encode_us(n_items: int, form: str, calls: int) -> float:
    """µs per `encode_state` of a state with `n_items` six-dimension items."""
    state = TargetState.from_json({"target": "t", "status": "cooldown"})
    held = _held(form, [_fields(6, i) for i in range(n_items)])
    state.score_history = (held[0] if held else EMPTY_HISTORY) if form == "history" else held
    t0 = time.perf_counter()
    for _ in range(calls):
        encode_state(state)
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    """Print the figures and write them to bench/results/history_items.json."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    calls = 200 if args.quick else 2_000
    info = common.machine()
    common.print_machine(info)
    rows, results = [], []
    for what, measure in (
        ("bytes per item, 1 dimension", lambda form: bytes_per_item(1, form)),
        ("bytes per item, 6 dimensions", lambda form: bytes_per_item(6, form)),
        *(
            (f"encode_state, {n} items, µs", lambda form, n=n: encode_us(n, form, calls))
            for n in (0, 5, 50)
        ),
    ):
        kept: dict[str, list[float]] = {form: [] for form in FORMS}
        for _ in range(args.rounds):
            for form in FORMS:  # interleaved: all see the same minute
                kept[form].append(measure(form))
        rows.append([what, *(common.min_median_max(kept[form], 0) for form in FORMS)])
        results.append({"figure": what, **kept})
    print(f"min / median / max of {args.rounds} rounds")
    print(common.table(["figure", "ScoreHistory (one text)", "ScoreItem each", "plain dicts"],
                       rows))  # fmt: skip
    path = common.write_results(
        "history_items", {"machine": info, "quick": args.quick, "figures": results}
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
