"""The spawn a daemon's run takes (runs/spawn.py with runs/libc_spawn.py), real children.

The daemon starts orchestrators with `cwd=None`, which takes the `posix_spawn` path (through
ctypes, the GIL released, where glibc allows; `os.posix_spawn` elsewhere): pinned down here
are the child's session, stdin, exact environment and default SIGPIPE/SIGXFSZ, the errors
of a missing program and of an environment `os.posix_spawn` would refuse. Both paths are
run where the ctypes one is available.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import anyio
import pytest

from autoloop_daemon.runs import libc_spawn
from autoloop_daemon.runs.spawn import spawn

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True, params=["ctypes", "os.posix_spawn"])
def spawn_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test on both paths (the ctypes one skipped where glibc lacks it)."""
    if request.param == "ctypes" and not libc_spawn.available():
        pytest.skip("the ctypes posix_spawn needs glibc >= 2.26 (POSIX_SPAWN_SETSID)")
    if request.param == "os.posix_spawn":
        monkeypatch.setattr(libc_spawn, "available", lambda: False)
    return str(request.param)


async def _output(command: list[str], env: dict[str, str]) -> tuple[int, int, str]:
    """Spawn `command`; its pid, exit code and stdout."""
    process = await spawn(command, cwd=None, env=env)
    chunks = []
    while True:
        try:
            chunks.append(await process.stdout.receive())  # type: ignore[union-attr]
        except anyio.EndOfStream:
            break
    code = await process.wait()
    await process.aclose()
    return process.pid, code, b"".join(chunks).decode()


def _sig_bit(sig: signal.Signals) -> int:
    return 1 << (int(sig) - 1)


async def test_a_spawned_child_has_its_session_devnull_stdin_exact_env_and_default_sigpipe(
    tmp_path: Path,
) -> None:
    sh = shutil.which("sh")
    assert sh is not None
    script = (
        'echo "ids $$ $(ps -o pgid= -p $$) $(ps -o sid= -p $$)"; '
        'echo "stdin $(readlink /proc/$$/fd/0)"; '
        'echo "env $(env | sort | tr "\\n" " ")"; '
        "grep SigIgn /proc/self/status"
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ONLY_THIS": "x y"}
    pid, code, out = await _output([sh, "-c", script], env)
    assert code == 0, out
    lines = dict(line.split(maxsplit=1) for line in out.splitlines())
    assert lines["ids"].split() == [str(pid)] * 3  # leads its own session and group
    assert lines["stdin"] == "/dev/null"
    assert "ONLY_THIS=x y" in lines["env"] and "HOME=" not in lines["env"]
    ignored = int(lines["SigIgn:"], 16)  # `grep` ran with what the spawn handed down
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # Python ignores it here...
    assert not ignored & (_sig_bit(signal.SIGPIPE) | _sig_bit(signal.SIGXFSZ))  # ...not there


async def test_a_missing_program_is_a_file_not_found_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-program"
    with pytest.raises(FileNotFoundError) as caught:
        await spawn([str(missing)], cwd=None, env={})
    assert caught.value.filename == str(missing)
    with pytest.raises(FileNotFoundError):
        await spawn(["no-such-program-on-path"], cwd=None, env={"PATH": str(tmp_path)})


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["/bin/true", "a\0b"], {}, "embedded null byte"),
        (["/bin/true"], {"A": "b\0c"}, "embedded null byte"),
        (["/bin/true"], {"A=B": "c"}, "illegal environment variable name"),
        (["/bin/true"], {"": "c"}, "illegal environment variable name"),
    ],
)
async def test_arguments_the_c_library_cannot_take_are_refused_before_any_spawn(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await spawn(argv, cwd=None, env=env)
