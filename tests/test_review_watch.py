"""`ReviewWatch`: the review queues polled in one worker call per scan. Iterations that
finish within `gather_s` of each other are scanned together (one worker hand-off, not one
per iteration), and what a queue holds is still announced once, from real files.

The daemon-level behaviour (gauge, `review_requested` in the log, verdicts over the socket)
is `tests/test_review_daemon.py`'s; here, a one-shot run that exits right after its
iteration still announces what that iteration held back."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from autoloop_daemon.engine import events as ev
from autoloop_daemon.models import LogEntry
from autoloop_daemon.observers.review_watch import ReviewWatch
from autoloop_daemon.vocab import RunStatus
from tests.helpers.daemon import make_target
from tests.helpers.fakes import orchestrator_cmd
from tests.helpers.logs import json_lines
from tests.helpers.process import run_autoloopd
from tests.helpers.review_queue import upstream_entry, write_pending
from tests.helpers.wait import wait_until

AT = datetime(2026, 12, 7, 6, 0, tzinfo=UTC).isoformat()


def _finished(target: str) -> ev.IterationFinished:
    entry = LogEntry(1, AT, AT, RunStatus.COMPLETED, "keep", None, 0.0, 0.1)
    return ev.IterationFinished(target, entry, total_cost_usd=0.0)


def _hold_one(state_root: Path, candidate: str) -> None:
    """A queue of one held-back candidate, in the upstream shape."""
    write_pending(state_root, json.dumps({"pending": [upstream_entry(candidate)]}))


@pytest.mark.anyio
async def test_iterations_finishing_close_together_are_scanned_in_one_call(
    tmp_path: Path,
) -> None:
    roots = {name: tmp_path / name for name in ("a", "b", "c")}
    _hold_one(roots["b"], "cand-1")
    asked: list[set[str] | None] = []  # what each scan read: None is every queue

    def roots_of(names: set[str] | None) -> dict[str, Path]:
        asked.append(None if names is None else set(names))
        return dict(roots) if names is None else {n: roots[n] for n in names}

    published: list[ev.Event] = []
    watch = ReviewWatch(roots_of, published.append, interval_s=60.0, gather_s=0.3)
    async with anyio.create_task_group() as tg:
        await tg.start(watch.run)
        await wait_until(lambda: published)  # the first scan reads every queue
        assert asked == [None]
        requested = [e for e in published if isinstance(e, ev.ReviewRequested)]
        assert [(e.target, e.candidate_id) for e in requested] == [("b", "cand-1")]

        watch(_finished("a"))
        await anyio.sleep(0.05)  # the watch has woken, and gathers
        watch(_finished("b"))  # within the gathering time of the first notice
        await wait_until(lambda: len(asked) == 2)
        assert asked[1] == {"a", "b"}
        _hold_one(roots["c"], "cand-2")
        watch(_finished("c"))
        await wait_until(lambda: len(asked) == 3)
        assert asked[2] == {"c"}
        await wait_until(lambda: len(published) == 2)
        tg.cancel_scope.cancel()
    requested = [e for e in published if isinstance(e, ev.ReviewRequested)]
    # cand-1 was announced once, though its target was scanned again
    assert [(e.target, e.candidate_id) for e in requested] == [("b", "cand-1"), ("c", "cand-2")]
    assert {name: len(entries) for name, entries in watch.pending.items()} == {
        "a": 0, "b": 1, "c": 1,
    }  # fmt: skip


@pytest.mark.anyio
async def test_a_notice_during_the_gathering_time_is_not_lost(tmp_path: Path) -> None:
    """Notices keep coming while a scan gathers: each target is read by one scan or the next,
    never dropped (the notice's set is taken when the scan starts)."""
    roots = {f"t{i}": tmp_path / f"t{i}" for i in range(20)}
    scanned: set[str] = set()

    def roots_of(names: set[str] | None) -> dict[str, Path]:
        if names is not None:
            scanned.update(names)
        return dict(roots) if names is None else {n: roots[n] for n in names}

    watch = ReviewWatch(roots_of, lambda _e: None, interval_s=60.0, gather_s=0.05)
    async with anyio.create_task_group() as tg:
        await tg.start(watch.run)
        for name in roots:
            watch(_finished(name))
            await anyio.sleep(0.01)
        await wait_until(lambda: scanned == set(roots))
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_flush_scans_the_notices_at_once(tmp_path: Path) -> None:
    """A stopping daemon does not wait out the gathering time: `flush` reads what finished."""
    root = tmp_path / "a"
    _hold_one(root, "cand-9")
    published: list[ev.Event] = []
    watch = ReviewWatch(lambda names: {"a": root}, published.append, gather_s=3600.0)
    watch(_finished("a"))
    with anyio.fail_after(5):
        await watch.flush()
    assert [(e.target, e.candidate_id) for e in published if isinstance(e, ev.ReviewRequested)] == [
        ("a", "cand-9")
    ]
    await watch.flush()  # nothing finished since: nothing read, nothing announced again
    assert len(published) == 1


def test_a_one_shot_run_announces_what_its_iteration_held_back(tmp_path: Path) -> None:
    """`--mode scheduled` runs one iteration and exits at once: the candidate it held back is
    still logged as `review_requested`, once (the scan after the run is not cut off by the
    exit). Which scan sees it is not asserted: on a loaded machine the start-up scan can
    run after the orchestrator has already written its queue."""
    target, state_root = make_target(tmp_path)
    args = ["--target", str(target), "--state-root", str(state_root), "--mode", "scheduled"]
    args += ["--orchestrator-cmd", orchestrator_cmd("hold"), "--log-level", "info"]
    done = run_autoloopd(args, timeout=60)
    assert done.returncode == 0, done.stderr
    events = [line["event"] for line in json_lines(done.stderr)]
    assert events.count("review_requested") == 1, done.stderr
