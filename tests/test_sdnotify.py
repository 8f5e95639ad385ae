"""sd_notify: the exact datagrams systemd receives, over real AF_UNIX sockets."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from autoloop_daemon.observers.sdnotify import NOTIFY_ENV_VARS, Notifier
from tests.helpers.notify import NotifyListener
from tests.helpers.wait import wait_until

RECV_TIMEOUT_S = 5.0


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[NotifyListener]:
    """A listener bound in the file system, as systemd's notify socket would be."""
    with NotifyListener(tmp_path) as listener:
        yield listener


@pytest.fixture
def abstract_listener() -> Iterator[NotifyListener]:
    """A listener bound in the abstract namespace (NOTIFY_SOCKET is its '@name')."""
    with NotifyListener(None) as listener:
        yield listener


def test_messages_arrive_as_exact_datagrams_on_a_path_socket(
    path_listener: NotifyListener,
) -> None:
    """ready/status/stopping/reloading each send one datagram with exactly these fields."""
    recv = path_listener.receive
    notifier = Notifier(environ=path_listener.env)
    assert notifier.enabled
    try:
        notifier.ready()
        assert recv() == "READY=1"
        notifier.ready("2 targets running")
        assert recv() == "READY=1\nSTATUS=2 targets running"
        notifier.status("coding-standards: iteration 3/5\ntech-article: cooldown")
        assert recv() == "STATUS=coding-standards: iteration 3/5 tech-article: cooldown"
        notifier.stopping()
        assert recv() == "STOPPING=1"

        before_us = time.monotonic_ns() // 1000
        notifier.reloading()
        after_us = time.monotonic_ns() // 1000
        match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", recv())
        assert match is not None
        assert before_us <= int(match.group(1)) <= after_us

        notifier.notify("FOO=1", "BAR=two words")
        assert recv() == "FOO=1\nBAR=two words"
    finally:
        notifier.close()


def test_abstract_namespace_socket_is_addressed_with_at_sign(
    abstract_listener: NotifyListener,
) -> None:
    """'@name' in NOTIFY_SOCKET reaches the abstract socket named 'name'."""
    assert abstract_listener.env["NOTIFY_SOCKET"].startswith("@")
    recv = abstract_listener.receive
    notifier = Notifier(environ=abstract_listener.env)
    try:
        notifier.ready("up")
        assert recv() == "READY=1\nSTATUS=up"
        notifier.stopping()
        assert recv() == "STOPPING=1"
    finally:
        notifier.close()


def test_close_then_notify_reopens_the_socket(path_listener: NotifyListener) -> None:
    """close() is idempotent and a later message still arrives."""
    recv = path_listener.receive
    notifier = Notifier(environ=path_listener.env)
    notifier.ready()
    assert recv() == "READY=1"
    notifier.close()
    notifier.close()
    notifier.stopping()
    assert recv() == "STOPPING=1"
    notifier.close()


def test_disabled_without_notify_socket_and_every_call_is_a_no_op() -> None:
    """Outside systemd nothing is sent, nothing is opened and nothing raises."""
    for environ in ({}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"}):
        notifier = Notifier(environ=environ)
        assert not notifier.enabled
        notifier.ready("x")
        notifier.status("x")
        notifier.stopping()
        notifier.reloading()
        notifier.notify("WATCHDOG=1")
        notifier.close()


def test_constructor_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping the process environment decides."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not Notifier().enabled
    monkeypatch.setenv("NOTIFY_SOCKET", "@some-name")
    assert Notifier().enabled


def test_unreachable_socket_is_logged_not_raised(tmp_path: Path) -> None:
    """A socket path with no listener never makes notify() raise."""
    notifier = Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert notifier.enabled
    for _ in range(3):
        notifier.ready("x")
        notifier.notify("WATCHDOG=1")
    notifier.close()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    """WATCHDOG_USEC=2000000 (2 s) means a ping every 1 s; our own WATCHDOG_PID is accepted."""
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2000000"}
    assert Notifier(environ=env).watchdog_interval_s() == 1.0
    own = {**env, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(environ=own).watchdog_interval_s() == 1.0


def test_watchdog_interval_is_none_when_not_asked_or_meant_for_another_pid() -> None:
    """No WATCHDOG_USEC, garbage, zero, or a WATCHDOG_PID that is not ours: no watchdog."""
    base = {"NOTIFY_SOCKET": "@x"}
    assert Notifier(environ=base).watchdog_interval_s() is None
    other_pid = str(os.getpid() + 1)
    cases = [
        {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": other_pid},
        {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "not-a-pid"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "0"},
    ]
    for extra in cases:
        assert Notifier(environ={**base, **extra}).watchdog_interval_s() is None, extra


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_watchdog_loop_sends_watchdog_repeatedly(path_listener: NotifyListener) -> None:
    """watchdog_loop pings WATCHDOG=1 every half interval until cancelled."""
    # WATCHDOG_USEC=100 ms -> one ping every 50 ms.
    notifier = Notifier(environ={**path_listener.env, "WATCHDOG_USEC": "100000"})
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(notifier.watchdog_loop)
            await wait_until(lambda: len(path_listener.messages()) >= 3, RECV_TIMEOUT_S)
            tg.cancel_scope.cancel()
    finally:
        notifier.close()
    received = [m.data.decode("utf-8") for m in path_listener.messages()]
    assert received[:3] == ["WATCHDOG=1"] * 3


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_watchdog_loop_keeps_running_until_cancelled(path_listener: NotifyListener) -> None:
    """Under move_on_after the loop is still pinging when the deadline cancels it."""
    notifier = Notifier(environ={**path_listener.env, "WATCHDOG_USEC": "40000"})
    with anyio.move_on_after(0.2) as scope:
        await notifier.watchdog_loop()
    notifier.close()
    assert scope.cancelled_caught
    assert path_listener.receive(timeout=1.0) == "WATCHDOG=1"
    assert path_listener.receive(timeout=1.0) == "WATCHDOG=1"


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_watchdog_loop_returns_at_once_without_watchdog() -> None:
    """No WATCHDOG_USEC (or no socket): the loop returns instead of sleeping forever."""
    with anyio.fail_after(1):
        await Notifier(environ={"NOTIFY_SOCKET": "@x"}).watchdog_loop()
        await Notifier(environ={"WATCHDOG_USEC": "1000000"}).watchdog_loop()


def test_env_vars_to_strip_from_children() -> None:
    """NOTIFY_ENV_VARS names exactly the variables systemd hands the main process."""
    assert set(NOTIFY_ENV_VARS) == {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
