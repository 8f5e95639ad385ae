"""sd_notify: the exact datagrams systemd receives, over real AF_UNIX sockets."""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from autoloop_daemon.runtime.sdnotify import NOTIFY_ENV_VARS, Notifier

RECV_TIMEOUT_S = 5.0


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory with a short path: AF_UNIX paths are limited to 107 bytes."""
    base = Path("/tmp") / f"sdn-{uuid.uuid4().hex[:8]}"
    base.mkdir()
    try:
        yield base
    finally:
        for child in base.iterdir():
            child.unlink()
        base.rmdir()


@pytest.fixture
def path_socket(tmp_path: Path, short_tmp: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound SOCK_DGRAM socket in the file system, as systemd's notify socket would be."""
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) >= 100:
        path = short_tmp / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(RECV_TIMEOUT_S)
    try:
        yield sock, str(path)
    finally:
        sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound SOCK_DGRAM socket in the abstract namespace; returns it and its '@name'."""
    name = f"autoloopd-test-{os.getpid()}-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(RECV_TIMEOUT_S)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def recv(sock: socket.socket) -> str:
    """Receive one datagram as text (fails the test after RECV_TIMEOUT_S)."""
    return sock.recv(4096).decode("utf-8")


def test_messages_arrive_as_exact_datagrams_on_a_path_socket(
    path_socket: tuple[socket.socket, str],
) -> None:
    """ready/status/stopping/reloading each send one datagram with exactly these fields."""
    sock, path = path_socket
    notifier = Notifier(environ={"NOTIFY_SOCKET": path})
    assert notifier.enabled
    try:
        notifier.ready()
        assert recv(sock) == "READY=1"
        notifier.ready("2 targets running")
        assert recv(sock) == "READY=1\nSTATUS=2 targets running"
        notifier.status("coding-standards: iteration 3/5\ntech-article: cooldown")
        assert recv(sock) == "STATUS=coding-standards: iteration 3/5 tech-article: cooldown"
        notifier.stopping()
        assert recv(sock) == "STOPPING=1"

        before_us = time.monotonic_ns() // 1000
        notifier.reloading()
        after_us = time.monotonic_ns() // 1000
        match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", recv(sock))
        assert match is not None
        assert before_us <= int(match.group(1)) <= after_us

        notifier.notify("FOO=1", "BAR=two words")
        assert recv(sock) == "FOO=1\nBAR=two words"
    finally:
        notifier.close()


def test_abstract_namespace_socket_is_addressed_with_at_sign(
    abstract_socket: tuple[socket.socket, str],
) -> None:
    """'@name' in NOTIFY_SOCKET reaches the abstract socket named 'name'."""
    sock, name = abstract_socket
    notifier = Notifier(environ={"NOTIFY_SOCKET": name})
    try:
        notifier.ready("up")
        assert recv(sock) == "READY=1\nSTATUS=up"
        notifier.stopping()
        assert recv(sock) == "STOPPING=1"
    finally:
        notifier.close()


def test_close_then_notify_reopens_the_socket(path_socket: tuple[socket.socket, str]) -> None:
    """close() is idempotent and a later message still arrives."""
    sock, path = path_socket
    notifier = Notifier(environ={"NOTIFY_SOCKET": path})
    notifier.ready()
    assert recv(sock) == "READY=1"
    notifier.close()
    notifier.close()
    notifier.stopping()
    assert recv(sock) == "STOPPING=1"
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
async def test_watchdog_loop_sends_watchdog_repeatedly(
    path_socket: tuple[socket.socket, str],
) -> None:
    """watchdog_loop pings WATCHDOG=1 every half interval until cancelled."""
    sock, path = path_socket
    sock.setblocking(False)
    # WATCHDOG_USEC=100 ms -> one ping every 50 ms.
    notifier = Notifier(environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    received: list[str] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(notifier.watchdog_loop)
            with anyio.fail_after(RECV_TIMEOUT_S):
                while len(received) < 3:
                    await anyio.wait_readable(sock)
                    received.append(sock.recv(4096).decode("utf-8"))
            tg.cancel_scope.cancel()
    finally:
        notifier.close()
    assert received == ["WATCHDOG=1"] * 3


@pytest.mark.anyio
async def test_watchdog_loop_keeps_running_until_cancelled(
    path_socket: tuple[socket.socket, str],
) -> None:
    """Under move_on_after the loop is still pinging when the deadline cancels it."""
    sock, path = path_socket
    notifier = Notifier(environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"})
    with anyio.move_on_after(0.2) as scope:
        await notifier.watchdog_loop()
    notifier.close()
    assert scope.cancelled_caught
    sock.settimeout(1.0)
    assert recv(sock) == "WATCHDOG=1"
    assert recv(sock) == "WATCHDOG=1"


@pytest.mark.anyio
async def test_watchdog_loop_returns_at_once_without_watchdog() -> None:
    """No WATCHDOG_USEC (or no socket): the loop returns instead of sleeping forever."""
    with anyio.fail_after(1):
        await Notifier(environ={"NOTIFY_SOCKET": "@x"}).watchdog_loop()
        await Notifier(environ={"WATCHDOG_USEC": "1000000"}).watchdog_loop()


def test_env_vars_to_strip_from_children() -> None:
    """NOTIFY_ENV_VARS names exactly the variables systemd hands the main process."""
    assert set(NOTIFY_ENV_VARS) == {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
