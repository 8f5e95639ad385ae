"""The review verbs of the control API: list what awaits a human, record a verdict.

A thin layer over the review files of each target's state root (storage/files/review_files.py)
and the supervisor's records (which target lives where). Verdicts are serialised by one lock
per daemon, so two operators approving at once cannot both take the same entry; each is
written by storage/files/review_decide.py. In cluster mode the hosting routes a verdict on a
target another host runs through the database (cluster/reviews.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from autoloop_daemon.clock import now_utc
from autoloop_daemon.control.answers import answered, error, json_object
from autoloop_daemon.control.peer_credentials import CALLER_KEY
from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.exceptions import UnknownTargetError
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.operator_action import Caller
from autoloop_daemon.storage.files.review_decide import decide_entry
from autoloop_daemon.storage.files.review_files import read_queue

Handler = Callable[[Request], Awaitable[Response]]
VERBS = {"approve": "approve", "reject": "reject"}
MAX_NOTE = 4000


class Reviews:
    """The review queue of every target of `supervisor`, and the verdicts given on it."""

    def __init__(self, supervisor: Supervisor) -> None:
        """Serve `supervisor`'s targets."""
        self._supervisor = supervisor
        self._lock = anyio.Lock()

    def _specs(self) -> list[TargetSpec]:
        names = sorted(r.spec.name for r in self._supervisor.runners())
        return [spec for name in names if (spec := self._spec(name)) is not None]

    def _spec(self, name: str) -> TargetSpec | None:
        record = self._supervisor.record(name)
        return None if record is None else record.spec

    async def queues(self, *, waiting_only: bool = False) -> list[dict[str, Any]]:
        """Every target's queue (`ReviewQueue.to_json`): those of the targets run here read
        in one worker call; in cluster mode, the others as their holders published them.
        `waiting_only` leaves out the local queues with no entry and no problem (the status
        report counts a target missing from the list as 0: at 10,000 targets that is 10,000
        dicts fewer per rendering)."""
        roots = [(s.name, s.state_root) for s in self._specs()]

        def read() -> list[dict[str, Any]]:
            now = now_utc()
            queues = ((name, read_queue(root, now)) for name, root in roots)
            return [
                queue.to_json(name)
                for name, queue in queues
                if queue.entries or queue.problem is not None or not waiting_only
            ]

        local = await anyio.to_thread.run_sync(read)
        return await self._supervisor.hosting.review_queues(local)

    async def decide(
        self, name: str, wanted: str | None, verb: str, note: str | None, by: str
    ) -> dict[str, Any]:
        """Record `verb` (approve or reject) on target `name`'s entry `wanted`; what was done.

        UnknownTargetError for no such target, ValueError for a bad verb or note,
        CommandRefusedError when no pending entry matches (or several do).
        """
        spec = self._spec(name)
        if spec is None:
            raise UnknownTargetError(name)
        if verb not in VERBS:
            raise ValueError(f"verdict must be approve or reject, not {verb!r}")
        if note is not None and len(note) > MAX_NOTE:
            raise ValueError(f"note is longer than {MAX_NOTE} characters")
        routed = await self._supervisor.hosting.review(name, wanted, verb, note, by)
        if routed is not None:
            return routed  # recorded in the cluster's database for the host running it
        async with self._lock:
            done = await anyio.to_thread.run_sync(decide_entry, spec, wanted, verb, note, by)
        for runner in self._supervisor.runners():
            if runner.spec.name == name:
                runner.reviews.wake()  # the loop counts it before its next turn
        return done


def reviewer(scope: Scope, claimed: str | None) -> str:
    """Who gave a verdict, for the review log: the bearer token on TCP; on the socket the
    peer's uid as the kernel gives it (SO_PEERCRED), with the name `ctl` sends beside it."""
    if (auth := scope.get("autoloopd.auth")) is not None:
        return str(auth)
    caller = scope.get(CALLER_KEY)
    uid = caller.uid if isinstance(caller, Caller) else None
    who = (claimed or "").strip()[:200]
    if uid is not None:
        return f"socket (uid {uid}; says {who})" if who else f"socket (uid {uid})"
    return f"socket ({who})" if who else "socket"


def review_routes(
    reviews: Reviews, acted: Callable[[Handler], Handler] = lambda h: h
) -> list[Route]:
    """`GET /api/reviews` and `POST /api/targets/{name}/review` over `reviews`; `acted`
    wraps the verdict's handler (the API drops its rendered status after it)."""

    async def listing(request: Request) -> Response:
        return JSONResponse({"targets": await reviews.queues()})

    async def review(request: Request) -> Response:
        name = request.path_params["name"]
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            # A form posted from another site cannot set this type without a CORS preflight,
            # which this API never grants: no cross-site verdicts through a logged-in browser.
            return error(415, "the request body must be application/json", name)

        async def act() -> dict[str, Any]:
            body = await json_object(request)
            wanted, verdict, note = body.get("id"), body.get("verdict"), body.get("note")
            claimed = body.get("reviewer")
            if not isinstance(verdict, str):
                raise ValueError("verdict must be approve or reject")
            if not all(v is None or isinstance(v, str) for v in (wanted, note, claimed)):
                raise ValueError("id, note and reviewer must be strings")
            by = reviewer(request.scope, claimed)
            return {"review": await reviews.decide(name, wanted, verdict, note, by)}

        return await answered(name, act)

    return [
        Route("/api/reviews", listing),
        Route("/api/targets/{name}/review", acted(review), methods=["POST"]),
    ]
