"""`autoloopd status`'s review counts when the client builds the report itself: held-back
candidates per target and in the summary.

From the daemon (`GET /api/reviews`, one more request) when it answered, else from each
row's state root on disk (storage/files/review_files.py). A queue that cannot be read
counts 0 and names its problem in the row's `review_problem` (status_report.with_queues).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoloop_daemon.control.client import NotRunningError, request
from autoloop_daemon.status_report import with_queues

SOCKET_TIMEOUT_S = 10.0


def with_reviews(report: dict[str, Any]) -> dict[str, Any]:
    """`report` with `pending_reviews` (and `review_problem`) in every row and the total in
    `reviews_pending`."""
    queues = None
    if report["daemon"].get("source") == "socket":
        queues = _from_daemon(Path(report["daemon"]["control_socket"]))
    if queues is None:
        queues = _from_files(report["targets"])
    return with_queues(report, queues)


def _from_daemon(sock: Path) -> list[Any] | None:
    try:
        code, payload = request(sock, "GET", "/api/reviews", timeout=SOCKET_TIMEOUT_S)
    except (NotRunningError, PermissionError):
        return None
    if code != 200 or not isinstance(payload, dict):
        return None
    return list(payload.get("targets", []))


def _from_files(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from autoloop_daemon.clock import now_utc
    from autoloop_daemon.storage.files.review_files import read_queue

    now = now_utc()
    return [
        read_queue(Path(r["state_root"]), now).to_json(r["target"])
        for r in rows
        if r.get("state_root")
    ]
