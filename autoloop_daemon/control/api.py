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
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from autoloop_daemon.control.answers import answered, error, json_object
from autoloop_daemon.control.peer_credentials import CALLER_KEY
from autoloop_daemon.control.reviews import Reviews, review_routes
from autoloop_daemon.control.status_routes import budget_payload, status_routes
from autoloop_daemon.engine.commands import Commands
from autoloop_daemon.engine.operator_audit import audited
from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.exceptions import StateCorruptError, UnknownTargetError
from autoloop_daemon.observers.metrics import CONTENT_TYPE, Metrics
from autoloop_daemon.operator_action import Caller

HISTORY_LIMIT = 2000


def static_dir() -> Path:
    """Where the dashboard's files are shipped (package data `autoloop_daemon/web/static`)."""
    return Path(str(resources.files("autoloop_daemon") / "web" / "static"))


Handler = Callable[[Request], Awaitable[Response]]


def _target_command(commands: Commands, supervisor: Supervisor) -> Handler:
    async def command(request: Request) -> Response:
        name = request.path_params["name"]
        verb = request.path_params["verb"]
        if verb not in VERBS:
            return error(404, f"unknown command {verb!r}", name)

        async def act() -> dict[str, Any]:
            body = await json_object(request) if verb == "extend" else {}
            message = await audited(
                supervisor,
                supervisor.events,
                caller_of(request.scope),
                verb,
                name,
                {k: body[k] for k in ("iterations", "cost_usd") if k in body},
                lambda: _run_verb(commands, name, verb, body),
            )
            return {"message": message}

        return await answered(name, act)

    return command


VERBS = ("pause", "resume", "run-now", "stop", "reset", "extend")


async def _run_verb(commands: Commands, name: str, verb: str, body: dict[str, Any]) -> str:
    """One verb of `commands` on target `name` (extend's values from `body`)."""
    match verb:
        case "pause":
            return await commands.pause(name)
        case "resume":
            return await commands.resume(name)
        case "run-now":
            return await commands.run_now(name)
        case "stop":
            return await commands.stop(name)
        case "reset":
            return await commands.reset(name)
    iterations = body.get("iterations", 0)
    cost = body.get("cost_usd", 0.0)
    return await commands.extend(name, iterations, cost)  # bounds: ValueError, 400


def caller_of(scope: Scope) -> Caller:
    """Who sent a request: what `TagPeer` put in its scope (unix socket: the peer's uid),
    else a TCP peer by the scope's client address."""
    caller = scope.get(CALLER_KEY)
    if isinstance(caller, Caller):
        return caller
    client = scope.get("client")
    address = f"{client[0]}:{client[1]}" if client else None
    return Caller("tcp" if client else "socket", address=address)


def build_app(supervisor: Supervisor, metrics: Metrics, static: Path | None = None) -> Starlette:
    """The control API over `supervisor`; `metrics` renders `/metrics`."""
    files = static or static_dir()
    commands = Commands(supervisor)
    verbs = _target_command(commands, supervisor)

    reviews = Reviews(supervisor)
    status, status_cache = status_routes(supervisor, reviews)

    async def budget(request: Request) -> Response:
        return JSONResponse(budget_payload(supervisor.snapshot(targets=False)))

    async def history(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            entries = await commands.history(name, HISTORY_LIMIT)
        except UnknownTargetError:
            return error(404, f"no target named {name!r}", name)
        except StateCorruptError as exc:
            return error(500, str(exc), name)
        return JSONResponse({"target": name, "entries": entries})

    async def reload(request: Request) -> Response:
        report = await supervisor.reload()
        if not report.ok:
            return error(422, report.error or "reload refused")
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
            *status,
            Route("/api/budget", budget),
            Route("/api/targets/{name}/history", history),
            *review_routes(reviews, acted=status_cache.fresh_after),
            Route("/api/targets/{name}/{verb}", status_cache.fresh_after(verbs), methods=["POST"]),
            Route("/api/reload", status_cache.fresh_after(reload), methods=["POST"]),
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
        return error(404, f"no such file: {name}")
    return FileResponse(path)


class BearerAuth:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        """Wrap `app`."""
        self._app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse with 401 unless the token matches (compared in constant time); two
        `Authorization` headers are a 400."""
        if scope["type"] == "http":
            given = [v for k, v in scope.get("headers") or [] if k == b"authorization"]
            if len(given) > 1:  # which one counts is ambiguous between proxies and us
                await error(400, "more than one Authorization header")(scope, receive, send)
                return
            if not hmac.compare_digest(given[0] if given else b"", self._expected):
                response = error(401, "missing or wrong bearer token")
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
            scope["autoloopd.auth"] = "bearer token"  # who decides a review (control/reviews.py)
        await self._app(scope, receive, send)
