"""One operator command as a record: what was asked, by whom, from where, and what came of it.

The control API builds one per command (`pause`, `resume`, `run-now`, `extend`, `reset`,
`stop`); the journal logs it, `/metrics` counts it and the target's state keeps the last one
(`last_operator_action`, an optional key: a state without it is still schema 1.0).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Origin = Literal["socket", "tcp", "internal"]
# "ok": it took; "refused": it did not apply now (409); "unknown_target" (404); "bad_request"
# (400); "failed": anything else.
Outcome = Literal["pending", "ok", "refused", "unknown_target", "bad_request", "failed"]


@dataclass(frozen=True, slots=True)
class Caller:
    """Where a command came from: the listener, the peer's uid (unix socket, SO_PEERCRED) and
    the peer's address (TCP)."""

    origin: Origin
    uid: int | None = None
    address: str | None = None


@dataclass(frozen=True, slots=True)
class OperatorAction:
    """One command on one target and its outcome; `message` is the answer given."""

    verb: str
    target: str
    caller: Caller
    at: str
    values: dict[str, Any] = field(default_factory=dict)
    outcome: Outcome = "pending"
    message: str = ""

    def settled(self, outcome: Outcome, message: str) -> OperatorAction:
        """This action with its outcome and answer."""
        return replace(self, outcome=outcome, message=message)

    def to_json(self) -> dict[str, Any]:
        """The state's `last_operator_action` object (and the journal event's fields)."""
        return {
            "verb": self.verb,
            "values": dict(self.values),
            "origin": self.caller.origin,
            "uid": self.caller.uid,
            "address": self.caller.address,
            "at": self.at,
            "outcome": self.outcome,
            "message": self.message,
        }


def operator_who(action: Mapping[str, Any]) -> str:
    """Who gave a command, in words, from a `last_operator_action` object: "uid 1000",
    "tcp 127.0.0.1:5123", or its origin alone."""
    uid = action.get("uid")
    if isinstance(uid, int) and not isinstance(uid, bool):
        return f"uid {uid}"
    origin = str(action.get("origin") or "unknown origin")
    address = action.get("address")
    return f"{origin} {address}" if isinstance(address, str) and address else origin
