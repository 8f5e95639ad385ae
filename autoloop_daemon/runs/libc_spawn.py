"""`posix_spawn` called through ctypes, so that the GIL is released while it waits.

glibc's `posix_spawn` clones the caller (CLONE_VM | CLONE_VFORK) and returns once the child
has exec'd. `os.posix_spawn` holds the GIL for all of that; the wait is the child's turn on
a CPU, which on a loaded machine takes milliseconds. py-spy on a busy fleet (32 runs at
once, 2 cores, load ~3) found half of the event loop's GIL-holding samples in that one call
(issue 24): every worker thread stood still meanwhile. A foreign call through `ctypes.CDLL`
releases the GIL, so the other threads go on while the child gets to its exec.

`spawn_session` does what `spawn.py` asked of `os.posix_spawn`: stdin from /dev/null,
stdout and stderr onto the given descriptors, a new session, SIGPIPE and SIGXFSZ back to
their default actions. `available()` is False where the C library lacks any of it (not
glibc >= 2.26: POSIX_SPAWN_SETSID); `spawn.py` then uses `os.posix_spawn`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["available", "spawn_session"]

_SETSIGDEF = 0x04  # POSIX_SPAWN_SETSIGDEF (glibc's value, as os.posix_spawn uses it)
_SETSID = 0x80  # POSIX_SPAWN_SETSID (glibc >= 2.26)
# Opaque glibc types, over-allocated and aligned (posix_spawn_file_actions_t is 80 bytes
# on x86-64, posix_spawnattr_t 336, sigset_t 128): the C library initialises them.
_FileActions = ctypes.c_uint64 * 32
_Attributes = ctypes.c_uint64 * 64
_SigSet = ctypes.c_uint64 * 32


def _load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None or not hasattr(os, "posix_spawn"):
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        for symbol in (
            "posix_spawn",
            "posix_spawn_file_actions_init",
            "posix_spawn_file_actions_addopen",
            "posix_spawn_file_actions_adddup2",
            "posix_spawn_file_actions_destroy",
            "posix_spawnattr_init",
            "posix_spawnattr_setflags",
            "posix_spawnattr_setsigdefault",
            "posix_spawnattr_destroy",
            "sigemptyset",
            "sigaddset",
            "gnu_get_libc_version",
        ):
            getattr(libc, symbol)
    except (OSError, AttributeError):
        return None
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    major, _, minor = libc.gnu_get_libc_version().decode().partition(".")
    if (int(major), int(minor.split(".")[0] or 0)) < (2, 26):
        return None
    libc.posix_spawn_file_actions_addopen.argtypes = [
        ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint
    ]  # fmt: skip
    libc.posix_spawnattr_setflags.argtypes = [ctypes.c_void_p, ctypes.c_short]
    return libc


_LIBC = _load()


def available() -> bool:
    """Whether `spawn_session` can be used here (glibc >= 2.26)."""
    return _LIBC is not None


def _c_strings(items: Sequence[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    array = (ctypes.c_char_p * (len(items) + 1))()
    array[: len(items)] = list(items)
    array[len(items)] = None
    return array


def _check(code: int, what: str) -> None:
    if code != 0:
        raise OSError(code, f"{what}: {os.strerror(code)}")


def spawn_session(
    executable: str, argv: Sequence[str], env: Mapping[str, str], stdout: int, stderr: int
) -> int:
    """Start `executable` with `argv` and exactly `env` in a new session (see the module
    docstring); returns its pid. OSError (with the errno of the failed exec, naming
    `executable`) when it cannot be started; ValueError for what `os.posix_spawn` refuses
    (a NUL byte, an environment name that is empty or holds "=")."""
    libc = _LIBC
    if libc is None:
        raise OSError(38, "posix_spawn through ctypes is not available here")
    actions, attributes, defaults = _FileActions(), _Attributes(), _SigSet()
    fa, at = ctypes.byref(actions), ctypes.byref(attributes)
    _check(libc.posix_spawn_file_actions_init(fa), "file actions")
    try:
        _check(libc.posix_spawnattr_init(at), "attributes")
        try:
            _check(
                libc.posix_spawn_file_actions_addopen(fa, 0, os.devnull.encode(), os.O_RDONLY, 0),
                "stdin",
            )
            _check(libc.posix_spawn_file_actions_adddup2(fa, stdout, 1), "stdout")
            _check(libc.posix_spawn_file_actions_adddup2(fa, stderr, 2), "stderr")
            libc.sigemptyset(ctypes.byref(defaults))
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):
                libc.sigaddset(ctypes.byref(defaults), int(sig))
            _check(libc.posix_spawnattr_setsigdefault(at, ctypes.byref(defaults)), "signals")
            _check(libc.posix_spawnattr_setflags(at, _SETSIGDEF | _SETSID), "flags")
            return _spawn(libc, executable, argv, env, fa, at)
        finally:
            libc.posix_spawnattr_destroy(at)
    finally:
        libc.posix_spawn_file_actions_destroy(fa)


def _spawn(
    libc: ctypes.CDLL,
    executable: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    actions: Any,
    attributes: Any,
) -> int:
    """The call itself (the GIL released for it)."""
    args = [os.fsencode(arg) for arg in argv]
    pairs = [(os.fsencode(key), os.fsencode(value)) for key, value in env.items()]
    if any(b"\0" in arg for arg in args) or any(b"\0" in k + v for k, v in pairs):
        raise ValueError("embedded null byte")  # what os.posix_spawn says
    if any(not key or b"=" in key for key, _ in pairs):
        raise ValueError("illegal environment variable name")
    argv_c = _c_strings(args)
    env_c = _c_strings([key + b"=" + value for key, value in pairs])
    pid = ctypes.c_int(0)
    code = libc.posix_spawn(
        ctypes.byref(pid),
        os.fsencode(executable),
        actions,
        attributes,
        argv_c,
        env_c,
    )
    if code != 0:
        raise OSError(code, os.strerror(code), executable)
    return pid.value
