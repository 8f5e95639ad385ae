"""Reviewers' verdicts in cluster mode: given on any host, applied by the one running it.

A verdict on a target this host runs is written here at once (as on a single host) and
recorded in the database as applied, so other hosts see it. On a target another host runs
(or none yet), it is recorded in the cluster's database (storage/postgres/review_verdicts.py;
the first verdict on a candidate wins) and the host holding the target applies it within one
round: written into the target's files as a
local verdict would be (storage/files/review_decide.py: feedback record, review log with the
reviewer's name, time and note), then marked applied, or refused with the reason when the
candidate is unknown there or already decided, so no verdict is lost silently. There the
candidate is found in the queue its holder published (cluster/review_queues.py): by its id,
candidate id or request id, or by nothing when it is the only one, and recorded by its id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import structlog

from autoloop_daemon.clock import now_utc, to_iso
from autoloop_daemon.engine.target_runner import TargetRunner
from autoloop_daemon.exceptions import CommandRefusedError
from autoloop_daemon.policy.review_queue import PendingReview, find_entry
from autoloop_daemon.storage.files.review_decide import decide_entry
from autoloop_daemon.storage.postgres import review_pending, review_verdicts
from autoloop_daemon.storage.postgres.db import ClusterError, Database
from autoloop_daemon.storage.postgres.review_verdicts import ClusterVerdict

log = structlog.get_logger("autoloopd.review")


class ClusterReviews:
    """Route verdicts through the database, and apply those on the targets held here."""

    def __init__(
        self,
        db: Database,
        host: str,
        runner_of: Callable[[str], TargetRunner | None],
        holder_of: Callable[[str], str | None],
        wake: Callable[[], None],
    ) -> None:
        """`runner_of(name)` is the target's live runner here (None: not run here);
        `holder_of(name)` the host holding it; `wake()` asks the member for a round soon."""
        self._db = db
        self._host = host
        self._runner_of = runner_of
        self._holder_of = holder_of
        self._wake = wake

    async def route(
        self, name: str, wanted: str | None, verb: str, note: str | None, by: str
    ) -> dict[str, Any]:
        """What was decided: in the target's files when `name` runs here (and recorded in
        the database as applied), otherwise recorded in the database for its holder.
        CommandRefusedError without a candidate id, when the candidate already has a
        verdict, or when the database refuses."""
        runner = self._runner_of(name)
        if runner is not None:
            return await self._decide_here(runner, wanted, verb, note, by)
        holder = self._holder_of(name)
        where = f"the host running it ({holder})" if holder else "the next host to run it"
        wanted = await self._resolve(name, wanted)
        try:
            first, row = await review_verdicts.record(self._db, name, wanted, verb, note, by)
        except ClusterError as exc:
            raise CommandRefusedError(f"{name}: the cluster database refused: {exc}") from exc
        if not first:
            raise CommandRefusedError(f"{wanted} of {name} already has a verdict: {_said(row)}")
        self._wake()
        log.info("review_recorded", target=name, review_id=wanted, verdict=verb, by=by)
        return {
            "verdict": verb, "by": by, "at": to_iso(row.decided_at), "note": note,
            "id": wanted, "recorded": True, "holder": holder,
            "message": f"{verb} of {wanted} recorded; {where} applies it within one round",
        }  # fmt: skip

    async def _resolve(self, name: str, wanted: str | None) -> str:
        """The id to record: the published queue's entry `wanted` names (its only entry
        when None), or `wanted` as given when none matches (the queue may not be published
        yet: the holder refuses an unknown one). CommandRefusedError when no id is given
        and the queue is not one entry, or when `wanted` names several."""
        try:
            published = (await review_pending.read(self._db, [name])).get(name)
        except ClusterError as exc:
            if wanted is None:
                raise CommandRefusedError(
                    f"{name} is not run on this host and its review queue could not be read "
                    f"from the cluster database ({exc}): name the candidate's id"
                ) from exc
            return wanted
        if published is None:
            if wanted is None:
                raise CommandRefusedError(
                    f"{name} is not run on this host and no host has published its review "
                    "queue yet: name the candidate's id"
                )
            return wanted
        now = now_utc()
        entries = [PendingReview.from_json(e, now) for e in published.entries]
        try:
            return find_entry(entries, wanted).review_id
        except ValueError as exc:
            if wanted is not None and not any(
                wanted in (e.review_id, e.candidate_id, e.request_id) for e in entries
            ):
                return wanted
            raise CommandRefusedError(f"{name} (held by {published.host}): {exc}") from None

    async def _decide_here(
        self, runner: TargetRunner, wanted: str | None, verb: str, note: str | None, by: str
    ) -> dict[str, Any]:
        """Decide in the files as on one host, then record it as applied here (best
        effort: the files are what decides; a database error is logged)."""
        done = await anyio.to_thread.run_sync(decide_entry, runner.spec, wanted, verb, note, by)
        runner.reviews.wake()
        self._wake()  # a round now: it publishes the queue without this entry
        name, review_id = runner.spec.name, str(done["id"])
        try:
            await review_verdicts.record_applied(
                self._db, name, review_id, verb, note, by, self._host
            )
        except ClusterError as exc:
            log.warning("cluster_review_unmarked", target=name, error=str(exc))
        return done

    async def apply(self, held: list[str]) -> None:
        """Write the unapplied verdicts on the targets `held` here into their files and
        mark each applied (or refused, with the reason). A database error waits for the
        next round; so does a verdict whose files could not be written."""
        try:
            verdicts = await review_verdicts.unapplied(self._db, held)
        except ClusterError as exc:
            log.warning("cluster_reviews_unread", error=str(exc))
            return
        for verdict in verdicts:
            runner = self._runner_of(verdict.target)
            if runner is not None:
                await self._apply_one(runner, verdict)

    async def _apply_one(self, runner: TargetRunner, v: ClusterVerdict) -> None:
        error: str | None = None
        try:
            await anyio.to_thread.run_sync(
                decide_entry, runner.spec, v.candidate_id, v.verdict, v.note, v.who,
                to_iso(v.decided_at),
            )  # fmt: skip
        except CommandRefusedError as exc:
            error = str(exc)
        except OSError as exc:  # the files, not the verdict: try again next round
            log.warning("cluster_review_unwritten", target=v.target, error=str(exc))
            return
        runner.reviews.wake()
        try:
            await review_verdicts.mark_applied(
                self._db, v.target, v.candidate_id, self._host, error
            )
        except ClusterError as exc:
            log.warning("cluster_review_unmarked", target=v.target, error=str(exc))
        if error is None:
            log.info("cluster_review_applied", target=v.target, review_id=v.candidate_id)
        else:
            log.warning("cluster_review_refused", target=v.target, review_id=v.candidate_id,
                        error=error)  # fmt: skip


def _said(row: ClusterVerdict) -> str:
    """The verdict that holds, in one phrase: what, by whom, when, and what became of it."""
    said = f"{row.verdict} by {row.who} at {to_iso(row.decided_at)}"
    if row.applied_at is None:
        return f"{said} (not applied yet)"
    if row.error is not None:
        return f"{said} (refused by {row.applied_by}: {row.error})"
    return f"{said} (applied by {row.applied_by})"
