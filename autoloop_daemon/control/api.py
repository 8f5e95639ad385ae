"""The control API: an ASGI app (Starlette) that is a thin layer over the supervisor.

Each route calls one method of the supervisor or of its `Commands` (engine/commands.py:
look the target up, check its state, act) and returns JSON, like supervisord's
rpcinterface: `autoloopd ctl`, `autoloopd status` and the dashboard are all clients of
these routes (docs/design.md, "Control API"). Errors are JSON
`{"error": "...", "target": "..."}` with 404 for an unknown target, 409 for a command that
does not apply now, 400 for a bad request, 422 for a refused reload. Nothing here ever
renders a target's `env` (secrets): responses come from the snapshot and the logs only.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from autoloop_daemon.clock import parse_iso
from autoloop_daemon.control.reviews import review_routes
from autoloop_daemon.engine.commands import Commands
from autoloop_daemon.engine.snapshot import FleetSnapshot
from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.exceptions import CommandRefusedError, StateCorruptError, UnknownTargetError
from autoloop_daemon.observers.metrics import CONTENT_TYPE, Metrics

HISTORY_LIMIT = 2000


def static_dir() -> Path:
    """Where the dashboard's files are shipped (package data `autoloop_daemon/web/static`)."""
    return Path(str(resources.files("autoloop_daemon") / "web" / "static"))


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
    return payload


def _error(status: int, message: str, target: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if target is not None:
        body["target"] = target
    return JSONResponse(body, status_code=status)


Handler = Callable[[Request], Awaitable[Response]]


def _target_command(commands: Commands) -> Handler:
    async def command(request: Request) -> Response:
        name = request.path_params["name"]
        verb = request.path_params["verb"]
        try:
            match verb:
                case "pause":
                    message = await commands.pause(name)
                case "resume":
                    message = await commands.resume(name)
                case "run-now":
                    message = await commands.run_now(name)
                case "stop":
                    message = await commands.stop(name)
                case "reset":
                    message = await commands.reset(name)
                case "extend":
                    body = await _json_body(request)
                    iterations = body.get("iterations", 0)
                    cost = body.get("cost_usd", 0.0)
                    if not isinstance(iterations, int) or isinstance(iterations, bool):
                        return _error(400, "iterations must be a whole number", name)
                    if not isinstance(cost, int | float) or isinstance(cost, bool):
                        return _error(400, "cost_usd must be a number", name)
                    message = await commands.extend(name, iterations, float(cost))
                case _:
                    return _error(404, f"unknown command {verb!r}", name)
        except UnknownTargetError:
            return _error(404, f"no target named {name!r}", name)
        except CommandRefusedError as exc:
            return _error(409, str(exc), name)
        except ValueError as exc:
            return _error(400, str(exc), name)
        return JSONResponse({"ok": True, "target": name, "message": message})

    return command


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise ValueError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    return body


def build_app(supervisor: Supervisor, metrics: Metrics, static: Path | None = None) -> Starlette:
    """The control API over `supervisor`; `metrics` renders `/metrics`."""
    files = static or static_dir()
    commands = Commands(supervisor)

    async def status(request: Request) -> Response:
        # The budget and the rows at the same instant (nothing awaits in between).
        snap = supervisor.snapshot(targets=False)
        return JSONResponse(status_payload(snap, rows=supervisor.target_rows()))

    async def budget(request: Request) -> Response:
        return JSONResponse(budget_payload(supervisor.snapshot(targets=False)))

    async def history(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            entries = await commands.history(name, HISTORY_LIMIT)
        except UnknownTargetError:
            return _error(404, f"no target named {name!r}", name)
        except StateCorruptError as exc:
            return _error(500, str(exc), name)
        return JSONResponse({"target": name, "entries": entries})

    async def reload(request: Request) -> Response:
        report = await supervisor.reload()
        if not report.ok:
            return _error(422, report.error or "reload refused")
        return JSONResponse(
            {
                "ok": True,
                "added": list(report.added),
                "removed": list(report.removed),
                "changed": list(report.changed),
            }
        )

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def index(request: Request) -> Response:
        return await _static_file(files, "index.html")

    async def static_file(request: Request) -> Response:
        return await _static_file(files, request.path_params["file"])

    return Starlette(
        routes=[
            Route("/api/status", status),
            Route("/api/budget", budget),
            Route("/api/targets/{name}/history", history),
            *review_routes(supervisor),
            Route("/api/targets/{name}/{verb}", _target_command(commands), methods=["POST"]),
            Route("/api/reload", reload, methods=["POST"]),
            Route("/metrics", prometheus),
            Route("/", index),
            Route("/static/{file:path}", static_file),
        ]
    )


async def _static_file(root: Path, name: str) -> Response:
    def find() -> Path | None:  # file system calls: in a worker thread
        path = (root / name).resolve()
        return path if path.is_relative_to(root.resolve()) and path.is_file() else None

    path = await anyio.to_thread.run_sync(find)
    if path is None:
        return _error(404, f"no such file: {name}")
    return FileResponse(path)


class BearerAuth:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        """Wrap `app`."""
        self._app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse with 401 unless the token matches (compared in constant time)."""
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                response = _error(401, "missing or wrong bearer token")
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
            scope["autoloopd.auth"] = "bearer token"  # who decides a review (control/reviews.py)
        await self._app(scope, receive, send)
