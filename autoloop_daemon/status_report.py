"""`autoloopd status`'s report from a running daemon: its status answer and its review
queues shaped into what `status --json` prints (docs/design.md, "Status JSON").

Built where the data is: in the daemon for `GET /api/status/report` (one request, which the
client prints without parsing), and in the client from `/api/status` and `/api/reviews`
when it names the state roots itself (`--state-root`) or the daemon predates that route.
The same functions both ways, so the two cannot drift. Standard library only: `autoloopd
status` imports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from autoloop_daemon.status_text import status_row


def from_daemon(
    payload: Mapping[str, Any], socket: str, roots: Mapping[str, Path] | None = None
) -> dict[str, Any]:
    """The report of the daemon's `/api/status` answer `payload`, asked on `socket`; a row's
    state root is `roots`' when given, else its `state_location`'s."""
    given = roots or {}
    rows = []
    for t in payload["targets"]:
        root = given.get(t["target"])
        state_root = state_root_of(t.get("state_location")) if root is None else str(root)
        rows.append(status_row(t, state_root))
    return around(payload, socket, rows)


def around(payload: Mapping[str, Any], socket: str, rows: Any) -> dict[str, Any]:
    """The report of `payload` asked on `socket`, with `rows` as its targets (the report's
    rows, or their text laid out: control/report_rows.py)."""
    report = {
        "daemon": {**payload["daemon"], "source": "socket", "control_socket": socket},
        "budget": payload["budget"],
        "targets": rows,
    }
    if "cluster" in payload:  # cluster mode: this host and every host's liveness
        report["cluster"] = payload["cluster"]
    return report


def with_queues(report: dict[str, Any], queues: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """`report` with `pending_reviews` and `review_problem` in every row and their total in
    `reviews_pending`, from the review queues `queues` (`ReviewQueue.to_json`'s)."""
    by_target = by_name(queues)
    total = 0
    for row in report["targets"]:
        row["pending_reviews"], row["review_problem"] = review_counts(by_target, row["target"])
        total += row["pending_reviews"]
    report["reviews_pending"] = total
    return report


def by_name(queues: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The review queues `queues` by their target's name."""
    return {q["target"]: q for q in queues if isinstance(q, Mapping)}


def review_counts(by_target: Mapping[str, Mapping[str, Any]], name: str) -> tuple[int, str | None]:
    """A row's `pending_reviews` and `review_problem`, from the queues `by_name` gave."""
    queue = by_target.get(name, {})
    return len(queue.get("pending", ())), queue.get("problem")


def state_root_of(location: Any) -> str:
    """The state root of a `state_location` (the state file's path, or the root itself).

    What `Path` says, without building one for a location it would print unchanged (an
    absolute path with no empty or `.` component, the daemon's own form).
    """
    text = location or "."
    if (
        not isinstance(text, str)
        or not text.startswith("/")
        or "//" in text
        or "/./" in text
        or text.endswith(("/", "/."))
    ):
        path = Path(text)
        return str(path.parent if path.suffix == ".json" else path)
    cut = text.rfind("/")
    name = text[cut + 1 :]
    if name.endswith(".json") and name != ".json":  # Path(text).suffix == ".json"
        return text[:cut] or "/"
    return text
