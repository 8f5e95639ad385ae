"""The status routes of the control API: `GET /api/status` and `GET /api/status/report`.

`/api/status` is the daemon, the budget and every target's row (stable keys), for the
dashboard and scripts. `/api/status/report` is what `autoloopd status` prints, made here
where the rows already are, so that the client sends one request and prints the answer as
it came, without parsing megabytes at 10,000 targets: `?form=json` the report of
`status --json` (status_report.py), `?form=text` (the default) the table of the rows that
are not quiet and the summary (status_text.py), `&all=1` every row, `&tz=NAME` and
`&utc_offset=S` its times in the client's zone (`status` sends its own: the operator's
clock, not the service's; the offset serves when this machine does not know the name).
Both are rendered at most once per `RenderCache` interval for every client; the rows and
the budget are taken on the event loop at one instant, the report is made from them and
encoded (JSON or text) in a worker thread.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any, Literal

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from autoloop_daemon.clock import parse_iso
from autoloop_daemon.control.answers import error
from autoloop_daemon.control.render_cache import Expiring, RenderCache
from autoloop_daemon.control.report_rows import RowTexts
from autoloop_daemon.control.reviews import Reviews
from autoloop_daemon.engine.snapshot import FleetSnapshot
from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.status_report import from_daemon, with_queues
from autoloop_daemon.status_text import render_text, zone_of
from autoloop_daemon.zone_key import is_zone_key

FORMS = ("text", "json")
MAX_SOCKET_TEXT = 4096
# The JSON report's row texts (~1 kB per target) are let go after this long without one.
ROW_TEXTS_IDLE_S = 60.0
# Where the client's socket path goes in a cached JSON report: each client has its own.
_SOCKET_MARK = "\0autoloopd control socket\0"
_SOCKET_MARK_JSON = json.dumps(_SOCKET_MARK).encode()


def status_payload(
    snap: FleetSnapshot, now: float | None = None, rows: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """`GET /api/status`: the daemon, the budget and every target (stable keys); the targets
    are `rows` when given (`Supervisor.target_rows()`), else those of `snap`."""
    now = time.time() if now is None else now
    started = parse_iso(snap.started_at)
    return {
        "daemon": {
            "running": True,
            "pid": snap.pid,
            "started_at": snap.started_at,
            "uptime_s": None if started is None else round(now - started.timestamp(), 3),
            "ready": snap.ready,
            "shutting_down": snap.shutting_down,
        },
        "budget": budget_payload(snap),
        "targets": [target.to_json() for target in snap.targets] if rows is None else rows,
        **({} if snap.cluster is None else {"cluster": asdict(snap.cluster)}),
    }


def budget_payload(snap: FleetSnapshot) -> dict[str, Any]:
    """`GET /api/budget`: spent, reserved, cap and what remains (null without a cap); with a
    budget window, also the window, its spending, its cap and when the next one opens."""
    b = snap.budget
    payload: dict[str, Any] = {
        "spent_usd": b.spent_usd,
        "reserved_usd": b.reserved_usd,
        "cap_usd": b.cap_usd,
        "remaining_usd": None if b.cap_usd is None else round(max(0.0, b.cap_usd - b.spent_usd), 6),
    }
    if b.window is not None:
        payload.update(
            window=b.window,
            window_start=b.window_start,
            window_resets_at=b.window_resets_at,
            window_spent_usd=b.window_spent_usd,
            window_cap_usd=b.window_cap_usd,
        )
    if b.hard_runs_at_once is not None:  # guarantee = "hard": concurrency the money allows
        payload.update(
            hard_worst_case_usd=b.hard_worst_case_usd, hard_runs_at_once=b.hard_runs_at_once
        )
    return payload


# ("api" | "text" | "json", every row, the client's UTC offset (s), its IANA zone name)
Form = tuple[str, bool, int | None, str | None]
MAX_UTC_OFFSET_S = 14 * 3600  # the widest offset in use (UTC+14)


def status_routes(
    supervisor: Supervisor, reviews: Reviews
) -> tuple[list[Route], RenderCache[Form]]:
    """The two status routes over `supervisor` (review counts from `reviews`), and their
    cache (a command drops it)."""

    def payload() -> dict[str, Any]:
        # The budget and the rows at the same instant (nothing awaits in between).
        snap = supervisor.snapshot(targets=False)
        return status_payload(snap, rows=supervisor.target_rows())

    row_texts = RowTexts()  # the JSON report's rows, kept between renderings
    row_texts_used = Expiring(ROW_TEXTS_IDLE_S, row_texts.forget)

    async def render(form: Form) -> bytes:
        if form[0] == "api":
            return bytes(JSONResponse(payload()).body)
        queues = await reviews.queues(waiting_only=True)  # read in a worker thread
        if form[0] == "json":
            row_texts_used.touch()
        return await anyio.to_thread.run_sync(_report_text, payload(), queues, form, row_texts)

    cache: RenderCache[Form] = RenderCache(render)

    async def status(request: Request) -> Response:
        return Response(await cache.get(("api", True, None, None)), media_type="application/json")

    async def report(request: Request) -> Response:
        query = request.query_params
        form, every, sock = query.get("form", "text"), query.get("all", "0"), query.get("socket")
        if form not in FORMS:
            return error(400, f"form must be one of {', '.join(FORMS)}, not {form!r}")
        if every not in ("0", "1"):
            return error(400, f"all must be 0 or 1, not {every!r}")
        if sock is not None and len(sock) > MAX_SOCKET_TEXT:
            return error(400, f"socket is longer than {MAX_SOCKET_TEXT} characters")
        offset = _utc_offset(query.get("utc_offset")) if form == "text" else None
        if offset is False:
            return error(400, "utc_offset must be whole minutes within 14 hours of UTC")
        zone = query.get("tz") if form == "text" else None
        if zone is not None and not is_zone_key(zone):
            return error(400, "tz must be an IANA time zone name such as Europe/Berlin")
        body = await cache.get((form, form == "json" or every == "1", offset, zone))
        if form == "text":
            return Response(body, media_type="text/plain; charset=utf-8")
        named = json.dumps(sock).encode()  # null when the client named none
        return Response(body.replace(_SOCKET_MARK_JSON, named, 1), media_type="application/json")

    return [Route("/api/status", status), Route("/api/status/report", report)], cache


def _utc_offset(text: str | None) -> int | Literal[False] | None:
    """The client's UTC offset in seconds (`utc_offset`), None when it sent none, False when
    it is not whole minutes within MAX_UTC_OFFSET_S (so that few renderings are kept)."""
    if text is None:
        return None
    try:
        seconds = int(text)
    except ValueError:
        return False
    return seconds if abs(seconds) <= MAX_UTC_OFFSET_S and seconds % 60 == 0 else False


def _report_text(
    payload: dict[str, Any], queues: list[dict[str, Any]], form: Form, row_texts: RowTexts
) -> bytes:
    """The report of `payload` (`/api/status`'s, taken on the event loop; made here in a
    worker thread, as its rows are this rendering's own) and the review `queues`, as
    `autoloopd status` prints it (its last newline included); the JSON's rows kept in
    `row_texts`; the text's times in the client's zone (`status_text.zone_of`), else in
    the daemon's."""
    kind, every_row, offset, key = form
    if kind == "json":
        return row_texts.report_json(payload, _SOCKET_MARK, queues)
    report = with_queues(from_daemon(payload, _SOCKET_MARK), queues)
    zone = zone_of(key, offset)
    return (render_text(report, every_row=every_row, zone=zone) + "\n").encode()
