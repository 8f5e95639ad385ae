"""`each_at_most` awaits every item once, never more than its limit at once, and raises
what an item raised (the daemon prepares its targets with it: engine/supervisor.py)."""

from __future__ import annotations

import anyio
import pytest

from autoloop_daemon.engine.fan_out import each_at_most


@pytest.mark.anyio
@pytest.mark.parametrize(("limit", "items"), [(3, 10), (8, 2), (1, 4), (0, 2)])
async def test_every_item_once_and_at_most_the_limit_at_once(limit: int, items: int) -> None:
    """Items wait until the test lets them go; at no point do more than `limit` (at least
    one) run, and every item ran exactly once."""
    running: set[int] = set()
    most = 0
    done: list[int] = []
    release = anyio.Event()

    async def one(item: int) -> None:
        nonlocal most
        running.add(item)
        most = max(most, len(running))
        await release.wait()
        running.discard(item)
        done.append(item)

    async with anyio.create_task_group() as tg:
        tg.start_soon(each_at_most, limit, range(items), one)
        await anyio.wait_all_tasks_blocked()
        assert len(running) == min(max(1, limit), items)
        release.set()
    assert sorted(done) == list(range(items))
    assert most == min(max(1, limit), items)


@pytest.mark.anyio
async def test_an_error_stops_the_rest_and_is_raised() -> None:
    """An item that raises cancels the others; no item after it starts."""
    started: list[int] = []

    async def one(item: int) -> None:
        started.append(item)
        if item == 1:
            raise ValueError("item 1")
        await anyio.sleep_forever()

    with pytest.raises(ExceptionGroup) as raised:
        await each_at_most(2, range(10), one)
    assert raised.group_contains(ValueError, match="item 1")
    assert started == [0, 1]
