"""`autoloopd ctl`: a thin client of a running daemon's control API.

  autoloopd ctl (--config FILE | --socket PATH) VERB [TARGET] [options]

Verbs: status, budget, reload, pause T, resume T, run-now T, stop T, reset T,
extend T --iterations +N --cost +USD, review T [ID] approve|reject [--note TEXT]. Each
prints one clear line (status and budget print the JSON) and exits 0, 2 for an unknown
target or a value out of its bound (policy/bounds.py), 3 when no daemon answers, 4 when the
command does not apply to the target now (or no such candidate awaits review), 77 when the
socket refuses us, 78 when a reload finds the
configuration invalid (so `ExecReload=autoloopd ctl reload` fails `systemctl reload`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from autoloop_daemon.control.client import NotRunningError, request
from autoloop_daemon.control.quick_socket import quick_socket
from autoloop_daemon.exceptions import ConfigError
from autoloop_daemon.exit_codes import (
    EXIT_CONFIG,
    EXIT_NOPERM,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
)
from autoloop_daemon.json_text import dumps_indented
from autoloop_daemon.policy.bounds import (
    MAX_EXTEND_COST_USD,
    MAX_EXTEND_ITERATIONS,
    amount,
    whole_number,
)

TARGET_VERBS = ("pause", "resume", "run-now", "stop", "reset", "extend", "review")
VERBS = ("status", "budget", "reload", *TARGET_VERBS)


def _signed_int(text: str) -> int:
    """`+N` within the daemon's bound (policy/bounds.py): a bad one exits 2 naming it."""
    try:
        return whole_number("--iterations", int(text.lstrip("+")), MAX_EXTEND_ITERATIONS)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--iterations ")) from None


def _signed_money(text: str) -> float:
    """`+USD` finite and within the daemon's bound: NaN, inf, 1e308 exit 2 naming it."""
    try:
        return amount("--cost", float(text.lstrip("+$")), MAX_EXTEND_COST_USD)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--cost ")) from None


def build_parser() -> argparse.ArgumentParser:
    """The parser of `autoloopd ctl`."""
    p = argparse.ArgumentParser(
        prog="autoloopd ctl", description="Control a running autoloopd through its socket."
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="the daemon's config file (finds its socket)")
    where.add_argument("--socket", type=Path, help="the control socket's path")
    p.add_argument("verb", choices=VERBS)
    p.add_argument("target", nargs="?", help="the target's name (for target commands)")
    p.add_argument("--iterations", type=_signed_int, default=0, help="extend: +N iterations")
    p.add_argument("--cost", type=_signed_money, default=0.0, help="extend: +USD of cost cap")
    p.add_argument("verdict", nargs="*", help="review: [ID] approve|reject")
    p.add_argument("--note", help="review: the reviewer's note, passed on to the generator")
    return p


def _fail(message: str, code: int) -> int:
    print(f"autoloopd ctl: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str]) -> int:
    """`autoloopd ctl` entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if args.verb in TARGET_VERBS and not args.target:
        parser.error(f"{args.verb} needs a TARGET")
    if args.verb not in TARGET_VERBS and args.target:
        parser.error(f"{args.verb} takes no TARGET")
    if args.verb == "extend" and not (args.iterations or args.cost):
        parser.error("extend needs --iterations +N and/or --cost +USD")
    if (args.verb == "review") != bool(args.verdict):
        parser.error("only review takes a verdict" if args.verdict else "review needs a verdict")
    if args.verdict and (len(args.verdict) > 2 or args.verdict[-1] not in ("approve", "reject")):
        parser.error("review takes [ID] approve|reject")
    path = args.socket
    if path is None and args.verb != "reload":  # a reload checks the whole config first
        path = quick_socket(args.config, os.environ)
    if path is None:
        try:
            path = _socket_from_config(args.config)
        except ConfigError as exc:
            return _fail(str(exc), EXIT_CONFIG)
        if path is None:
            return _fail("the default control socket path is too long; set "
                         "daemon.control_socket", EXIT_CONFIG)  # fmt: skip
    method, url, body = _route(args)
    try:
        status, payload = request(path, method, url, body)
    except NotRunningError as exc:
        return _fail(f"autoloopd is not running: {exc}", EXIT_NOT_RUNNING)
    except PermissionError as exc:
        return _fail(
            f"permission denied on {path} ({exc.strerror}): run as the service's user or "
            "a member of its group",
            EXIT_NOPERM,
        )
    return _report(args, status, payload)


def _socket_from_config(config: Path) -> Path | None:
    """The control socket of `config`, the whole config read and checked (ConfigError)."""
    from autoloop_daemon.config.loader import load_config
    from autoloop_daemon.control.settings import socket_path  # pydantic: slow to import

    return socket_path(load_config(config))


def _route(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    if args.verb == "status":
        return "GET", "/api/status", None
    if args.verb == "budget":
        return "GET", "/api/budget", None
    if args.verb == "reload":
        return "POST", "/api/reload", None
    url = f"/api/targets/{quote(args.target, safe='')}/{args.verb}"
    if args.verb == "extend":
        return "POST", url, {"iterations": args.iterations, "cost_usd": args.cost}
    if args.verb == "review":
        wanted = args.verdict[0] if len(args.verdict) == 2 else None
        body = {"id": wanted, "verdict": args.verdict[-1], "note": args.note}
        return "POST", url, {**body, "reviewer": _whoami()}
    return "POST", url, None


def _whoami() -> str:
    """This user, as the review log records who gave a verdict through the socket."""
    import pwd

    uid = os.getuid()
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _report(args: argparse.Namespace, status: int, payload: Any) -> int:
    error = payload.get("error") if isinstance(payload, dict) else None
    if status == 404 and args.target:
        return _fail(f"unknown target {args.target!r} (not in the daemon's configuration)",
                     EXIT_USAGE)  # fmt: skip
    if status == 400:  # a value out of its bound (the sum of extensions): the daemon names it
        return _fail(f"refused: {error}", EXIT_USAGE)
    if status == 409:
        return _fail(str(error), EXIT_REFUSED)
    if status == 422:  # a refused reload: the configuration error, as --check prints it
        return _fail(f"reload refused: {error}", EXIT_CONFIG)
    if status == 401:
        return _fail(str(error), EXIT_NOPERM)
    if status >= 400:
        return _fail(f"{status}: {error}", EXIT_REFUSED)
    if args.verb in ("status", "budget"):
        print(dumps_indented(payload))
    elif args.verb == "reload":
        changes = ", ".join(
            f"{key} {', '.join(payload[key])}"
            for key in ("added", "removed", "changed")
            if payload.get(key)
        )
        print(f"reloaded{': ' + changes if changes else ' (no target changed)'}")
    elif args.verb == "review":
        r = payload["review"]
        if "feedback" in r:
            done = {"approve": "approved", "reject": "rejected"}.get(r["verdict"], r["verdict"])
            print(f"{done} {r['id']} of {args.target}; feedback in {r['feedback']}")
        else:  # recorded in the cluster's database for the host running the target
            print(f"{args.target}: {r['message']}")
    else:
        print(payload.get("message", "ok"))
    return EXIT_OK
