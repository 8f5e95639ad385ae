"""`autoloopd status`'s review counts: held-back candidates per target and in the summary.

From the daemon (`GET /api/reviews`, one more request) when it answered, else from each
row's state root on disk (storage/files/review_files.py). A queue that cannot be read
counts 0 and names its problem in the row's `review_problem`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoloop_daemon.control.client import NotRunningError, request

SOCKET_TIMEOUT_S = 10.0


def with_reviews(report: dict[str, Any]) -> dict[str, Any]:
    """`report` with `pending_reviews` (and `review_problem`) in every row and the total in
    `reviews_pending`."""
    queues = None
    if report["daemon"].get("source") == "socket":
        queues = _from_daemon(Path(report["daemon"]["control_socket"]))
    if queues is None:
        queues = _from_files(report["targets"])
    total = 0
    for row in report["targets"]:
        queue = queues.get(row["target"], {})
        row["pending_reviews"] = len(queue.get("pending", ()))
        row["review_problem"] = queue.get("problem")
        total += row["pending_reviews"]
    report["reviews_pending"] = total
    return report


def _from_daemon(sock: Path) -> dict[str, dict[str, Any]] | None:
    try:
        code, payload = request(sock, "GET", "/api/reviews", timeout=SOCKET_TIMEOUT_S)
    except (NotRunningError, PermissionError):
        return None
    if code != 200 or not isinstance(payload, dict):
        return None
    return {q["target"]: q for q in payload.get("targets", []) if isinstance(q, dict)}


def _from_files(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    from autoloop_daemon.clock import now_utc
    from autoloop_daemon.storage.files.review_files import read_queue

    now = now_utc()
    return {
        r["target"]: read_queue(Path(r["state_root"]), now).to_json(r["target"])
        for r in rows
        if r.get("state_root")
    }


def review_line(report: dict[str, Any]) -> str | None:
    """ "3 candidates awaiting review (a: 2, b: 1)", or None when none awaits."""
    total = report.get("reviews_pending") or 0
    if not total:
        return None
    per = ", ".join(
        f"{r['target']}: {r['pending_reviews']}"
        for r in report["targets"]
        if r.get("pending_reviews")
    )
    noun = "candidate" if total == 1 else "candidates"
    return f"reviews: {total} {noun} awaiting review ({per}); see `autoloopd review list`"
