"""Running one iteration: the orchestrator (or the simulator), then its result and scores.

Builds the argv from the target's template (never through a shell), runs it in its own
process group via `process.run_in_group`, reads the result as DESIGN.md orders it (JSON line,
then text summary, then failure) and finds the scores (result, scorer command, newest
`learner/*.json`). Returns an `IterationResult`; writing the log and state is the caller's.

Files the run leaves in the state root are the orchestrator's to write, so they are read
with suspicion: only regular files (no FIFO, socket, device, directory or link: those are
named in a warning and skipped), of bounded size, through the JSON reader that refuses
non-finite numbers and nesting too deep. A run log that is not a regular file fails the run.
"""

from __future__ import annotations

import json
import math
import signal
import stat
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

import anyio
import structlog

from autoloop_daemon import worker_threads
from autoloop_daemon.exceptions import (
    NotRegularFileError,
    ResultError,
    RunLogError,
    StateWriteError,
)
from autoloop_daemon.models import IterationResult, TargetSpec
from autoloop_daemon.runs import simulator
from autoloop_daemon.runs.command_line import argv_and_log, render_argv
from autoloop_daemon.runs.failure_cause import with_cause
from autoloop_daemon.runs.process import ProcessOutcome, child_environment, run_in_group
from autoloop_daemon.runs.results import (
    parse_result,
    parse_scorer_output,
    scores_from_json,
    tail_text,
)
from autoloop_daemon.storage.files import artifacts, fsio
from autoloop_daemon.storage.files.fsio import write_text_atomic

log = structlog.get_logger("autoloopd.orchestrator")

TRACE_LIMIT_BYTES = 64 * 1024
STDOUT_TAIL_BYTES = 1 << 20
LEARNER_SIZE_LIMIT = 16 * 1024 * 1024  # a scorer's output is kilobytes

OnStarted = Callable[[int], Awaitable[None]]
T = TypeVar("T")


class OffLoop(Protocol):
    """Runs blocking work off the event loop: `worker_threads.run_sync`, or the caller's
    own hand-off that does its work first (the in-flight checkpoint, engine/iteration.py)."""

    def __call__(self, work: Callable[[], T], /) -> Awaitable[T]:
        """`work()`'s result (or error), computed off the loop."""
        ...


class ProgressReader:
    """Finds progress lines in an orchestrator's stdout as it streams.

    A progress line is a JSON object on one line with a `cost_usd` (the run's cost so far)
    and no `decision` / `final_decision` (that would be the result). Each valid one is
    handed to `on_cost`; the result line's own cost to `on_final_cost` (a run stopped after
    it printed its result, before it exited, is then booked at what it said it cost);
    anything else is ignored. Memory stays bounded: a line longer than
    MAX_LINE_BYTES is skipped.
    """

    MAX_LINE_BYTES = 4096

    def __init__(
        self,
        on_cost: Callable[[float], None],
        on_final_cost: Callable[[float], None] | None = None,
    ) -> None:
        """Report each live cost to `on_cost`, the result line's to `on_final_cost`."""
        self._on_cost = on_cost
        self._on_final_cost = on_final_cost
        self._partial = bytearray()
        self._skipping = False

    def __call__(self, chunk: bytes) -> None:
        """Feed one chunk of stdout."""
        lines = chunk.split(b"\n")
        for i, piece in enumerate(lines):
            last = i == len(lines) - 1
            if not self._skipping:
                self._partial += piece
                if len(self._partial) > self.MAX_LINE_BYTES:
                    self._partial.clear()
                    self._skipping = True
            if last:
                break
            if not self._skipping:
                self._line(bytes(self._partial))
            self._partial.clear()
            self._skipping = False

    def _line(self, raw: bytes) -> None:
        text = raw.strip()
        if not text.startswith(b"{") or b"cost_usd" not in text:
            return
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            return
        if not isinstance(obj, dict):
            return
        final = "decision" in obj or "final_decision" in obj
        report = self._on_final_cost if final else self._on_cost
        cost = obj.get("cost_usd")
        if report is not None and isinstance(cost, int | float) and not isinstance(cost, bool):
            try:
                value = float(cost)
            except OverflowError:  # an integer too large for a float
                return
            if math.isfinite(value) and value >= 0:
                report(value)


def run_marker_prefix(spec: TargetSpec) -> str:
    """What every run marker of `spec`'s state root starts with (an iteration number follows)."""
    return f"{spec.state_root}#"


def run_log_file(spec: TargetSpec, iteration: int) -> Path | None:
    """Where the orchestrator's output of `iteration` goes (None on the simulator)."""
    return None if spec.dry_run else artifacts.run_log_path(spec.state_root, iteration)


def run_marker(spec: TargetSpec, iteration: int) -> str:
    """The value of AUTOLOOPD_RUN given to a run's processes, to find orphans after a crash."""
    return f"{run_marker_prefix(spec)}{iteration}"


def _describe_exit(outcome: ProcessOutcome, timeout_s: float) -> str:
    if outcome.timed_out:
        return f"timed out after {timeout_s:g} s"
    code = outcome.returncode
    if code is None:
        return "was stopped"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


def _failure_trace(what: str, outcome: ProcessOutcome) -> str:
    stderr = tail_text(outcome.stderr_tail, TRACE_LIMIT_BYTES)
    trace = f"orchestrator {what}\n{stderr}"
    encoded = trace.encode("utf-8", errors="replace")
    if len(encoded) > TRACE_LIMIT_BYTES:
        trace = encoded[-TRACE_LIMIT_BYTES:].decode("utf-8", errors="replace")
    return trace


async def _scores_from_scorer(spec: TargetSpec, iteration: int, marker: str) -> dict[str, float]:
    assert spec.scorer is not None
    argv = render_argv(spec.scorer, spec, iteration)
    runs = spec.state_root / "runs"
    try:
        outcome = await run_in_group(
            argv,
            cwd=None,
            env=child_environment(spec.env_map, marker),
            log_path=runs / f"iteration-{iteration}.scorer.log",
            timeout_s=spec.timeout_s,
            term_grace_s=spec.term_grace_seconds,
            stdout_tail_bytes=STDOUT_TAIL_BYTES,
        )
    except RunLogError as exc:
        log.warning("scorer_failed", error=str(exc))
        return {}
    except OSError as exc:
        log.warning("scorer_failed", error=f"cannot start {argv[0]!r}: {exc.strerror or exc}")
        return {}
    if outcome.timed_out or outcome.returncode != 0:
        log.warning("scorer_failed", error=f"scorer {_describe_exit(outcome, spec.timeout_s)}")
        return {}
    text = tail_text(outcome.stdout_tail, STDOUT_TAIL_BYTES)
    try:
        scores = parse_scorer_output(text)
    except ResultError as exc:
        log.warning("scorer_failed", error=f"unreadable scorer output: {exc}")
        return {}
    learner = artifacts.learner_path(spec.state_root, iteration)
    try:
        fsio.check_regular_or_absent(learner)
        await write_text_atomic(learner, text)
    except (NotRegularFileError, StateWriteError) as exc:  # the scores stand without it
        log.warning("learner_file_not_saved", path=str(learner), error=str(exc))
    return scores


def _newest_learner_scores(state_root: Path, since_wall: float) -> dict[str, float]:
    """Scores from the newest `learner/*.json` modified at or after `since_wall` (sync).

    Fresh entries that are not regular files, or that cannot be read or parsed, are named
    in a `learner_file_unreadable` warning and skipped; none of them is opened in a way
    that could block or follow a link.
    """
    learner = state_root / "learner"
    candidates = []
    try:
        for path in learner.glob("*.json"):
            try:
                st = path.lstat()
            except OSError:
                continue  # gone meanwhile
            if st.st_mtime >= since_wall - 1.0:
                candidates.append((st.st_mtime, path, st.st_mode))
    except OSError:
        return {}
    for _mtime, path, mode in sorted(candidates, reverse=True):
        if not stat.S_ISREG(mode):
            error = f"is {fsio.describe_file_type(mode)}, not a regular file"
            log.warning("learner_file_unreadable", path=str(path), error=error)
            continue
        try:
            raw = fsio.read_regular(path, LEARNER_SIZE_LIMIT)
            return scores_from_json(fsio.parse_json(raw.decode("utf-8")))
        except (OSError, ValueError, ResultError) as exc:
            error = fsio.describe_oserror(exc) if isinstance(exc, OSError) else str(exc)
            log.warning("learner_file_unreadable", path=str(path), error=error)
    return {}


def _unwritable(*paths: Path) -> str | None:
    """Why one of `paths` cannot be replaced by a new regular file, or None."""
    for path in paths:
        try:
            fsio.check_regular_or_absent(path)
        except NotRegularFileError as exc:
            return f"cannot write {path}: {exc}"
    return None


async def _run_simulated(spec: TargetSpec, iteration: int, off_loop: OffLoop) -> IterationResult:
    start = time.monotonic()
    run_log = artifacts.run_log_path(spec.state_root, iteration)
    learner = artifacts.learner_path(spec.state_root, iteration)
    problem = await off_loop(partial(_unwritable, run_log, learner))
    if problem is not None:
        return IterationResult(
            status="failed", duration_s=0.0, error=problem, failure_trace=problem
        )
    run = simulator.simulate_world(spec.simulation, spec.seed, spec.name, iteration)
    await anyio.sleep(spec.simulated_seconds)
    stdout = run.stdout(str(spec.path), str(spec.state_root), iteration)
    await write_text_atomic(run_log, stdout)
    await write_text_atomic(learner, run.learner_json())
    return IterationResult(
        status="completed",
        duration_s=time.monotonic() - start,
        decision=run.decision,
        candidate_id=run.candidate_id,
        artifact_path=f"{spec.state_root}/receipts/sim-{iteration:04d}.json",
        scores=run.scores,
        weighted_score=run.weighted_score,
        cost_usd=run.cost_usd,
        exit_code=0,
    )


FENCE_ENV = "AUTOLOOPD_FENCE"


async def run_iteration(
    spec: TargetSpec,
    iteration: int,
    *,
    handoff: Path | None = None,
    on_started: OnStarted | None = None,
    on_cost: Callable[[float], None] | None = None,
    fence: str | None = None,
    on_final_cost: Callable[[float], None] | None = None,
    prepare: OffLoop = worker_threads.run_sync,
    at_end: Callable[[ProcessOutcome], None] | None = None,
) -> IterationResult:
    """Run iteration `iteration` of `spec` and read what it decided.

    `fence` (cluster mode: `<target>:<fencing token>`) is passed as AUTOLOOPD_FENCE, for
    sinks that can refuse the writes of a host whose lease moved. `on_cost` sees each live
    cost of a progress line, `on_final_cost` the cost of the result line as it streams.
    `prepare` runs the blocking preparation (the argv, the run log's open) off the loop,
    exactly once, before anything starts; what it raises other than RunLogError (a failed
    checkpoint of the caller's) propagates. `at_end(outcome)` is called off the loop once
    a spawned run has ended (not when it was cancelled: `process.run_in_group`).

    Never raises for orchestrator misbehaviour: a failed run comes back with status
    "failed", a one-line `error` and a `failure_trace`. Cancellation (daemon shutdown) is
    propagated after the run's process group has been stopped.
    """
    if spec.dry_run:
        return await _run_simulated(spec, iteration, prepare)
    start = time.monotonic()
    started_wall = time.time()
    log_path = artifacts.run_log_path(spec.state_root, iteration)
    try:  # the argv and the run log: one worker call (with the caller's checkpoint)
        argv, log_fd = await prepare(partial(argv_and_log, spec, iteration, handoff, log_path))
    except RunLogError as exc:
        return _not_run(f"not started: {exc}", start)
    if argv is None:
        return _not_run(f"target directory is missing: {spec.path}", start)
    marker = run_marker(spec, iteration)
    env = child_environment(spec.env_map, marker)
    if fence is not None:
        env[FENCE_ENV] = fence
    try:
        outcome = await run_in_group(
            argv,
            cwd=None,
            env=env,
            log_path=log_path,
            log_fd=log_fd,
            timeout_s=spec.timeout_s,
            term_grace_s=spec.term_grace_seconds,
            stdout_tail_bytes=STDOUT_TAIL_BYTES,
            on_started=on_started,
            on_stdout=None if on_cost is None else ProgressReader(on_cost, on_final_cost),
            at_end=at_end,
        )
    except RunLogError as exc:
        return _not_run(f"not started: {exc}", start)
    except OSError as exc:
        return _not_run(f"cannot start orchestrator {argv[0]!r}: {exc.strerror or exc}", start)
    return await _read_outcome(spec, iteration, marker, outcome, start, started_wall)


def _not_run(error: str, start: float) -> IterationResult:
    return IterationResult(
        status="failed", duration_s=time.monotonic() - start, error=error, failure_trace=error
    )


async def _read_outcome(
    spec: TargetSpec,
    iteration: int,
    marker: str,
    outcome: ProcessOutcome,
    start: float,
    started_wall: float,
) -> IterationResult:
    """What a finished run decided: its exit, its result, then its scores."""

    def failed(error: str, what: str) -> IterationResult:
        return IterationResult(
            status="failed",
            duration_s=time.monotonic() - start,
            exit_code=outcome.returncode,
            error=error,
            failure_trace=_failure_trace(what, outcome),
        )

    if outcome.timed_out or outcome.returncode != 0:
        what = _describe_exit(outcome, spec.timeout_s)
        if not outcome.timed_out and (outcome.returncode or 0) > 0:  # it said why it quit
            what = with_cause(what, tail_text(outcome.stderr_tail, TRACE_LIMIT_BYTES))
        return failed(f"orchestrator {what}", what)
    try:
        result = parse_result(tail_text(outcome.stdout_tail, STDOUT_TAIL_BYTES))
    except ResultError as exc:
        return failed(
            f"orchestrator printed an invalid result: {exc}", f"printed an invalid result: {exc}"
        )
    if result is None:
        return failed("orchestrator printed no result", "printed no result")
    scores = result.scores
    if scores is None and spec.scorer:
        scores = await _scores_from_scorer(spec, iteration, marker)
    if not scores:
        scores = await worker_threads.run_sync(
            _newest_learner_scores, spec.state_root, started_wall
        )
    return IterationResult(
        status="completed",
        duration_s=time.monotonic() - start,
        decision=result.decision,
        candidate_id=result.candidate_id,
        artifact_path=result.artifact_path,
        scores=scores or {},
        weighted_score=result.weighted_score,
        cost_usd=result.cost_usd,
        exit_code=outcome.returncode,
    )


__all__ = ["render_argv", "run_iteration", "run_marker", "run_marker_prefix"]
