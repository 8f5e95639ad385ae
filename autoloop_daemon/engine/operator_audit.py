"""Every operator command leaves a trace: one `OperatorCommand` event and the target's state.

`audited` wraps one verb of `Commands` (engine/commands.py): it notes the action on the
target's state before acting (so a stop's reason can name who stopped it), runs the verb,
settles the outcome from its answer or its error, publishes the event (the journal logs it,
`/metrics` counts it) and saves the state with the settled action (not for a malformed
request, which changed nothing: its state file stays byte for byte as it was). Errors are re-raised
unchanged: the caller answers them as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from autoloop_daemon.clock import now_iso
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.commands import Supervised
from autoloop_daemon.exceptions import CommandRefusedError, UnknownTargetError
from autoloop_daemon.operator_action import Caller, OperatorAction, Outcome

log = structlog.get_logger("autoloopd.operator")


async def audited(
    supervisor: Supervised,
    events: ev.EventBus,
    caller: Caller,
    verb: str,
    name: str,
    values: dict[str, Any],
    act: Callable[[], Awaitable[str]],
) -> str:
    """Run `act` (one verb on target `name`) and leave its trace; returns `act`'s answer."""
    action = OperatorAction(verb, name, caller, now_iso(), values)
    before = _note(supervisor, name, action)
    outcome: Outcome = "failed"
    message = ""
    try:
        message = await act()
        outcome = "ok"
        return message
    except UnknownTargetError as exc:
        outcome, message = "unknown_target", str(exc)
        raise
    except CommandRefusedError as exc:
        outcome, message = "refused", str(exc)
        raise
    except ValueError as exc:
        outcome, message = "bad_request", str(exc)
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        settled = action.settled(outcome, message)
        events.publish(ev.OperatorCommand(settled))
        if outcome == "bad_request":  # nothing was done: the journal has it, the state not
            _note(supervisor, name, before)
        else:
            await _keep(supervisor, name, settled)


def _note(
    supervisor: Supervised, name: str, action: OperatorAction | dict[str, Any] | None
) -> dict[str, Any] | None:
    """The action on the target's current state (in memory) before the verb runs; returns
    the one it replaces (put back when the request was refused as malformed)."""
    record = supervisor.record(name)
    if record is None or record.runner is None:
        return None
    state = record.runner.state
    before = state.last_operator_action
    state.last_operator_action = action.to_json() if isinstance(action, OperatorAction) else action
    return before


async def _keep(supervisor: Supervised, name: str, action: OperatorAction) -> None:
    """The settled action on the target's (possibly new) state, saved. Not in cluster mode,
    where the host that holds the target's lease writes its state."""
    record = supervisor.record(name)
    if record is None or record.runner is None:
        return
    state = record.runner.state
    state.last_operator_action = action.to_json()
    if supervisor.hosting.host is not None:
        return
    try:
        await supervisor.storage.target(record.spec).save(state)
    except Exception as exc:  # the command's answer stands; the next save keeps the action
        log.warning("operator_action_not_saved", target=name, error=str(exc))
