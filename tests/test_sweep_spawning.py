"""A sweep does not take a child being spawned for an orphan (`reaper.spawning`).

Between a child's creation and its registration (`child_started`) it carries no run marker
and no known pid. Runs are spawned in worker threads, and a sweep after another run's end
may list the children right then. These tests hold a real child in that state, in a fresh
interpreter that is the subreaper (the test process itself must not become one), and run a
real sweep meanwhile.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER is Linux-only"
)

_SCRIPT = textwrap.dedent(
    """
    import contextlib, json, os, signal, subprocess, sys
    import anyio
    from autoloop_daemon.runs import reaper

    GUARDED = sys.argv[1] == "guarded"

    async def sweep_waits():
        # Until the sweep waits for the spawn under way (it has set up the spawn's event).
        with anyio.fail_after(20):
            while not any(event is not None for event in reaper._spawning.values()):
                await anyio.sleep(0.01)

    async def main():
        assert reaper.become_subreaper()
        swept = []
        sweep_over = anyio.Event()

        async def sweep():
            swept.extend(await reaper.sweep(None, 0.2))
            sweep_over.set()

        guard = reaper.spawning() if GUARDED else contextlib.nullcontext()
        async with anyio.create_task_group() as tg:
            with guard:
                # The child exists and nobody has registered it yet: the spawn's window.
                child = subprocess.Popen(["sleep", "30"], start_new_session=True)
                tg.start_soon(sweep)
                if GUARDED:
                    await sweep_waits()
                else:
                    with anyio.fail_after(20):
                        await sweep_over.wait()
                reaper.child_started(child.pid)
        alive = child.poll() is None
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        child.wait()
        print(json.dumps({"swept": swept, "child": child.pid, "alive": alive}))

    anyio.run(main)
    """
)


def _run(mode: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_sweep_waits_for_a_spawn_under_way_and_spares_its_child() -> None:
    result = _run("guarded")
    assert result["swept"] == []
    assert result["alive"] is True


def test_without_the_guard_the_same_sweep_stops_the_child() -> None:
    """The control: the window is real, and the first test's child was in it."""
    result = _run("bare")
    assert result["swept"] == [result["child"]]
    assert result["alive"] is False
