"""How the control API reads a command's body and answers it, the same for every route.

`json_object` is the one reader of a request's JSON body (NaN, Infinity and deep nesting are a
ValueError naming the problem); `error` is the one shape of a refusal; `answered` runs a
command on one target and maps its errors to their status codes (404 no such target, 409
refused now, 400 bad value).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from autoloop_daemon.exceptions import CommandRefusedError, UnknownTargetError


def error(status: int, message: str, target: str | None = None) -> JSONResponse:
    """A refusal: `{"error": message[, "target": target]}` with `status`."""
    body: dict[str, Any] = {"error": message}
    if target is not None:
        body["target"] = target
    return JSONResponse(body, status_code=status)


async def json_object(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object (an empty body is `{}`); ValueError otherwise."""
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}", parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("the request body is nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    return body


def _no_constant(name: str) -> Any:
    """`NaN`, `Infinity` and `-Infinity` are not JSON: refuse them (ValueError)."""
    raise ValueError(f"{name} is not a number JSON allows")


async def answered(name: str, act: Callable[[], Awaitable[dict[str, Any]]]) -> JSONResponse:
    """`{"ok": true, "target": name, **what act returns}`, or the refusal its error means."""
    try:
        done = await act()
    except UnknownTargetError:
        return error(404, f"no target named {name!r}", name)
    except CommandRefusedError as exc:
        return error(409, str(exc), name)
    except ValueError as exc:
        return error(400, str(exc), name)
    return JSONResponse({"ok": True, "target": name, **done})
