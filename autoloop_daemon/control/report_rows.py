"""The `status --json` report made by the daemon, each row's text kept between renderings.

At 10,000 targets most rows do not change from one `status --json` to the next (cooling,
waiting, stopped), yet each rendering made every row's report dict (`status_row`), checked
its values and encoded it: ~100 ms of a worker thread per rendering, a third of the
figure's 0.3 s (py-spy of a running daemon; issue 24). `RowTexts` keeps each target's row
text with the values it was made from (its `/api/status` row and its review counts); a
row whose values are equal is placed as it is, and only the others are made and encoded.
The text is `dumps_indented`'s of the same report, byte for byte (tests/test_report_rows.py).

Equal is Python's `==`: a value that changed only between equal numbers of another type
(`1` and `1.0`) keeps its earlier text, the same number. The rows held are this
rendering's: a target gone from the fleet is dropped. One rendering at a time
(`RenderCache`'s lock), so no lock here. Memory: ~1 kB per target (its text, ~0.7 kB, and
the tuple of its values; tracemalloc, 10,000 rows), held while `status --json` is asked
(the status routes `forget` it after a minute without one).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from autoloop_daemon.json_text import dumps_indented, indented, list_layout
from autoloop_daemon.status_report import around, by_name, review_counts, state_root_of
from autoloop_daemon.status_text import status_row

ROW_DEPTH = 2  # a row of the report's "targets" list: {"targets": [{...}]}
# Where the rows go in the report's text: a string JSON writes escaped, found by its text
# (as status_routes.py places the client's socket path).
_ROWS_MARK = "\0autoloopd report rows\0"
_ROWS_MARK_JSON = json.dumps(_ROWS_MARK)


class RowTexts:
    """Each target's last report row: the values it was made from, and its text (UTF-8)."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        """Nothing rendered yet."""
        self._held: dict[str, tuple[tuple[Any, ...], bytes]] = {}

    def forget(self) -> None:
        """Hold no row: the next rendering makes every row."""
        self._held = {}

    def report_json(
        self, payload: Mapping[str, Any], socket: str, queues: Iterable[Mapping[str, Any]]
    ) -> bytes:
        """`dumps_indented(with_queues(from_daemon(payload, socket), queues))` and a newline,
        encoded; each row made again only when its values or its review counts changed."""
        by_target = by_name(queues)
        held, kept = self._held, {}
        texts = []
        total = 0
        for target_row in payload["targets"]:
            name = target_row["target"]
            counts = review_counts(by_target, name)
            total += counts[0]
            key = (*target_row.values(), *counts)
            last = held.get(name)
            if last is not None and last[0] == key:
                text = last[1]
            else:
                row = status_row(target_row, state_root_of(target_row.get("state_location")))
                row["pending_reviews"], row["review_problem"] = counts
                text = indented(row, ROW_DEPTH).encode()
            kept[name] = (key, text)
            texts.append(text)
        self._held = kept
        report = around(payload, socket, _ROWS_MARK)
        report["reviews_pending"] = total
        head, tail = dumps_indented(report).split(_ROWS_MARK_JSON)
        if texts:
            opening, separator, closing = (x.encode() for x in list_layout(ROW_DEPTH - 1))
            rows = opening + separator.join(texts) + closing
        else:
            rows = b"[]"
        return b"".join((head.encode(), rows, tail.encode(), b"\n"))
