"""Alerts: runtime events turned into JSON messages for the `[[alerts]]` commands and URLs.

`Alerter` subscribes to the supervisor's events. Its subscriber only decides and queues
(a bounded queue: when it is full the alert is dropped and logged, the loop never waits);
its own task, `run`, drains the queue and delivers (alert_delivery.py), logging
`alert_sent` or `alert_failed` for each channel.

Alert kinds: `budget_threshold` (a fraction of the shared cap, of the current budget window's
cap (once per window) or of a target's cap reached,
checked at start, on every budget change and after every iteration), `target_stopped`,
`circuit_breaker` (a target stopped in `error`) and `daemon_stopping` (a stop was
requested, or every target is done).
Budget crossings fire once: their keys are kept in `<state_dir>/alerts_fired.json`
(replaced atomically) so a restart does not send them again.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from autoloop_daemon.clock import now_iso
from autoloop_daemon.config.alerts import AlertSettings
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.snapshot import FleetSnapshot
from autoloop_daemon.exceptions import StateWriteError
from autoloop_daemon.observers.alert_delivery import Outcome, post_json, run_command, with_retries
from autoloop_daemon.policy.thresholds import Crossing, crossings, new_crossings
from autoloop_daemon.storage.files import fsio
from autoloop_daemon.vocab import TargetStatus

log = structlog.get_logger("autoloopd.alerts")

FIRED_NAME = "alerts_fired.json"
QUEUE_SIZE = 256
# The longest a stopping daemon waits for queued alerts once every target has stopped
# (docs/design.md; deploy/autoloopd.service's TimeoutStopSec is above grace + this).
DRAIN_LIMIT_S = 30.0


@dataclass(frozen=True, slots=True)
class Alert:
    """One message to deliver, the rules it goes to, and the crossings it records."""

    kind: str
    payload: dict[str, Any]
    rules: tuple[int, ...]  # indices into the configured [[alerts]] entries
    fired: tuple[str, ...] = ()


@dataclass(slots=True)
class _Fired:
    keys: set[str] = field(default_factory=set)
    saved: frozenset[str] = frozenset()


def fired_path(state_dir: Path) -> Path:
    """`<state_dir>/alerts_fired.json`: the budget crossings already reported."""
    return Path(state_dir) / FIRED_NAME


def load_fired(path: Path) -> set[str]:
    """The crossing keys in `path`; an unreadable file is logged and counts as empty."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        log.warning("alerts_state_unreadable", path=str(path), error=str(exc))
        return set()
    fired = data.get("fired") if isinstance(data, dict) else None
    if not isinstance(fired, list):
        log.warning("alerts_state_unreadable", path=str(path), error="no list under 'fired'")
        return set()
    return {str(key) for key in fired}


class Alerter:
    """Decides which events become alerts, queues them, and delivers them in `run`."""

    def __init__(
        self,
        rules: Sequence[AlertSettings],
        *,
        state_dir: Path,
        snapshot: Callable[[], FleetSnapshot],
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        """Configure; nothing is read or started until `run`."""
        self._rules = tuple(rules)
        self._path = fired_path(state_dir)
        self._snapshot = snapshot
        self._fired = _Fired()
        self._send: MemoryObjectSendStream[Alert]
        self._receive: MemoryObjectReceiveStream[Alert]
        self._send, self._receive = anyio.create_memory_object_stream[Alert](queue_size)
        self._fractions = sorted(
            {f for r in self._rules if "budget_threshold" in r.events for f in r.budget_fractions}
        )
        self._stopping_sent = False
        self._done = anyio.Event()
        self._delivery = anyio.CancelScope()
        self._in_flight: Alert | None = None
        self._limit_s = DRAIN_LIMIT_S
        self._host = socket.gethostname()

    # ----------------------------------------------------------------- the task

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load the fired crossings, then deliver queued alerts until `finish` closes it."""
        try:
            loaded = await anyio.to_thread.run_sync(load_fired, self._path)
            self._fired.keys |= loaded  # keep any crossing seen before the task started
            self._fired.saved = frozenset(loaded)
            task_status.started()
            with self._delivery:  # cancelled by `finish` when its deadline passes
                async for alert in self._receive:
                    self._in_flight = alert
                    if alert.fired:
                        await self._save_fired()
                    await self._deliver(alert)
                    self._in_flight = None
            self._log_undelivered()
        finally:
            self._receive.close()
            self._done.set()

    async def finish(self, limit_s: float = DRAIN_LIMIT_S) -> None:
        """Stop taking alerts and give the queued ones at most `limit_s` to be delivered; each
        one still in flight or queued then is logged as `alert_not_delivered`."""
        self._send.close()
        self._limit_s = limit_s
        with anyio.move_on_after(limit_s):
            await self._done.wait()
        self._delivery.cancel()
        await self._done.wait()

    def _log_undelivered(self) -> None:
        pending = [] if self._in_flight is None else [self._in_flight]
        while True:
            try:
                pending.append(self._receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
        for alert in pending:
            log.error(
                "alert_not_delivered",
                alert=alert.kind,
                target=alert.payload.get("target"),
                error=f"the daemon is stopping: not delivered within {self._limit_s:g} s",
            )

    async def _save_fired(self) -> None:
        keys = frozenset(self._fired.keys)
        if keys == self._fired.saved:
            return
        data = fsio.dumps_json({"version": 1, "fired": sorted(keys)})
        try:
            await anyio.to_thread.run_sync(fsio.atomic_write_bytes, self._path, data)
        except StateWriteError as exc:  # the alert still goes out; a restart may repeat it
            log.error("alerts_state_write_failed", error=str(exc))
            return
        self._fired.saved = keys

    async def _deliver(self, alert: Alert) -> None:
        data = json.dumps(alert.payload).encode()
        for index in alert.rules:
            rule = self._rules[index]
            outcomes: list[Outcome] = []
            if rule.command is not None:
                send = partial(run_command, tuple(rule.command), data, rule.timeout_seconds)
                outcomes.append(await with_retries("command", send, rule.retries))
            if rule.url is not None:
                send = partial(post_json, rule.url, data, rule.timeout_seconds)
                outcomes.append(await with_retries("url", send, rule.retries))
            for outcome in outcomes:
                fields = dict(
                    alert=alert.kind,
                    rule=index,
                    via=outcome.via,
                    attempts=outcome.attempts,
                    target=alert.payload.get("target"),
                )
                if outcome.ok:
                    log.info("alert_sent", **fields)
                else:
                    log.error("alert_failed", error=outcome.error, **fields)

    # ----------------------------------------------------------------- the subscriber

    def __call__(self, event: ev.Event) -> None:
        """The event-bus subscriber: decide, queue, return at once."""
        match event:
            case ev.DaemonReady():
                snap = self._snapshot()
                self._check_budget(snap)
                for t in snap.targets:
                    self._check_target(t.target, t.total_cost_usd, t.max_cost_usd)
            case ev.BudgetChanged():
                if self._fractions:
                    self._report_crossings(
                        crossings(event.spent_usd, event.cap_usd, self._fractions)
                    )
                    if event.window_start is not None:
                        self._report_crossings(
                            crossings(
                                event.window_spent_usd,
                                event.window_cap_usd,
                                self._fractions,
                                window=event.window_start,
                            )
                        )
            case ev.IterationFinished():
                snap = self._snapshot()
                cap = next((t.max_cost_usd for t in snap.targets if t.target == event.target), None)
                self._check_target(event.target, event.total_cost_usd, cap)
            case ev.TargetStopped(announce=True):
                self._target_stopped(event)
            case ev.ShutdownRequested():
                self._daemon_stopping(event.reason, list(event.running))
            case ev.DaemonStopped():
                self._daemon_stopping("all targets stopped", [])
            case ev.ReviewRequested():
                self._review_requested(event)
            case ev.ReviewExpired():
                self._review_expired(event)
            case _:
                pass

    def _rules_for(self, kind: str, fraction: float | None = None) -> tuple[int, ...]:
        return tuple(
            i
            for i, r in enumerate(self._rules)
            if kind in r.events and (fraction is None or fraction in r.budget_fractions)
        )

    def _check_budget(self, snap: FleetSnapshot) -> None:
        if self._fractions:
            b = snap.budget
            self._report_crossings(crossings(b.spent_usd, b.cap_usd, self._fractions))
            if b.window_start is not None and b.window_spent_usd is not None:
                self._report_crossings(
                    crossings(
                        b.window_spent_usd, b.window_cap_usd, self._fractions, window=b.window_start
                    )
                )

    def _check_target(self, name: str, spent_usd: float, cap_usd: float | None) -> None:
        if self._fractions:
            self._report_crossings(crossings(spent_usd, cap_usd, self._fractions, target=name))

    def _report_crossings(self, found: Iterable[Crossing]) -> None:
        for crossing in new_crossings(found, self._fired.keys):
            self._fired.keys.add(crossing.key)
            who = "the shared budget" if crossing.target is None else crossing.target
            if crossing.window is not None:
                who = f"the budget window from {crossing.window}"
            self._queue(
                "budget_threshold",
                {
                    "scope": crossing.scope,
                    "target": crossing.target,
                    "fraction": crossing.fraction,
                    "spent_usd": round(crossing.spent_usd, 6),
                    "cap_usd": crossing.cap_usd,
                    "window": crossing.window,
                    "message": f"{who} reached {crossing.fraction:.0%} of its cap "
                    f"(${crossing.spent_usd:.2f} of ${crossing.cap_usd:.2f})",
                },
                self._rules_for("budget_threshold", crossing.fraction),
                fired=(crossing.key,),
            )

    def _target_stopped(self, event: ev.TargetStopped) -> None:
        details = {
            "target": event.target,
            "status": event.status,
            "reason": event.reason,
            "iterations_completed": event.iterations_completed,
            "total_cost_usd": round(event.total_cost_usd, 6),
        }
        if event.status == TargetStatus.ERROR:
            self._queue(
                "circuit_breaker",
                {**details, "message": f"{event.target}: circuit breaker: {event.reason}"},
                self._rules_for("circuit_breaker"),
            )
        if event.status == TargetStatus.STOPPED_SIGNAL and self._stopping_sent:
            return  # every target stops so when the daemon does: daemon_stopping says it
        self._queue(
            "target_stopped",
            {**details, "message": f"{event.target} stopped: {event.status}: {event.reason}"},
            self._rules_for("target_stopped"),
        )

    def _review_requested(self, event: ev.ReviewRequested) -> None:
        what = event.title or event.candidate_id or event.review_id
        self._review_alert(
            "review_requested",
            f"review:{event.target}:{event.review_id}",
            event,
            {"risk_level": event.risk_level, "message": f"{event.target}: candidate {what} "
             "awaits review"},
        )  # fmt: skip

    def _review_expired(self, event: ev.ReviewExpired) -> None:
        what = event.title or event.candidate_id or event.review_id
        self._review_alert(
            "review_expired",
            f"review_expired:{event.target}:{event.review_id}",
            event,
            {"hours": event.hours, "message": f"{event.target}: candidate {what} declined: "
             f"not reviewed within {event.hours:g} h"},
        )  # fmt: skip

    def _review_alert(
        self,
        kind: str,
        key: str,
        event: ev.ReviewRequested | ev.ReviewExpired,
        details: dict[str, Any],
    ) -> None:
        """One alert `kind` per review entry (`key`), across restarts."""
        if key in self._fired.keys:
            return
        self._fired.keys.add(key)
        payload = {
            "target": event.target,
            "review_id": event.review_id,
            "candidate_id": event.candidate_id,
            **details,
        }
        self._queue(kind, payload, self._rules_for(kind), fired=(key,))

    def _daemon_stopping(self, reason: str, running: list[str]) -> None:
        if self._stopping_sent:
            return
        self._stopping_sent = True
        snap = self._snapshot()
        cap = snap.budget.cap_usd
        self._queue(
            "daemon_stopping",
            {
                "reason": reason,
                "running": running,
                "spent_usd": snap.budget.spent_usd,
                "cap_usd": cap if cap is None or math.isfinite(cap) else None,
                "message": f"autoloopd on {self._host} is stopping: {reason}",
            },
            self._rules_for("daemon_stopping"),
        )

    def _queue(
        self,
        kind: str,
        details: dict[str, Any],
        rules: tuple[int, ...],
        fired: tuple[str, ...] = (),
    ) -> None:
        if not rules:
            return
        payload = {"event": kind, "at": now_iso(), "host": self._host, "pid": os.getpid()}
        payload.update(details)
        try:
            self._send.send_nowait(Alert(kind, payload, rules, fired))
        except anyio.WouldBlock:
            log.warning("alert_dropped", alert=kind, reason="queue full")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            log.warning("alert_dropped", alert=kind, reason="alerter stopped")
