"""`Daemon`: one real `autoloopd --config FILE` in the background and its JSON log; `Lab`:
one test's directories (target dirs, state dir, config file) and the daemons started on them."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.helpers.audit import check_state_dir
from tests.helpers.config import write_config
from tests.helpers.fakes import orchestrator_argv
from tests.helpers.logs import EventLog, matching
from tests.helpers.process import DidNotExit, kill, pid_alive, start_autoloopd, stop
from tests.helpers.wait import wait_for


class Daemon:
    """A running `autoloopd --config FILE` and its JSON log."""

    def __init__(
        self,
        config: Path,
        out: Path,
        *,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        cwd: Path | None = None,
    ) -> None:
        """Start the daemon (`started` is time.monotonic() just before); its stdout and
        stderr go to `out`."""
        self.config = config
        self.out = out
        self.log = EventLog(out)
        self.started = time.monotonic()
        self.proc: subprocess.Popen[bytes] = start_autoloopd(
            ["--config", str(config), *args], out, env=env, cwd=cwd
        )

    @property
    def pid(self) -> int:
        """The daemon's pid."""
        return self.proc.pid

    def text(self) -> str:
        """Everything the daemon printed so far."""
        return self.out.read_bytes().decode("utf-8", "replace")

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The JSON log lines (optionally only `event` with the given fields), in order."""
        return matching(self.log.refresh(), event, **match)

    def count(self, event: str) -> int:
        """How many `event` lines the daemon has logged so far."""
        self.log.refresh()
        return self.log.count(event)

    def wait_event(
        self,
        event: str,
        *,
        count: int = 1,
        timeout: float = 20.0,
        interval: float = 0.02,
        **match: Any,
    ) -> list[dict[str, Any]]:
        """Wait until `event` (with `match`) was logged `count` times; fail early on exit."""

        def seen() -> list[dict[str, Any]] | None:
            if not match and self.count(event) < count and self.proc.poll() is None:
                return None  # the cheap test first: a benchmark waits on thousands
            found = self.events(event, **match)
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                found = self.events(event, **match)  # the last lines may have just arrived
                if len(found) >= count:
                    return found
                raise AssertionError(
                    f"autoloopd exited ({self.proc.returncode}) before {count} x {event} "
                    f"{match}:\n{self.text()[-4000:]}"
                )
            return None

        result: list[dict[str, Any]] = wait_for(
            seen, timeout=timeout, interval=interval, what=f"{count} x {event} {match}"
        )
        return result

    def send(self, sig: int) -> None:
        """Send `sig` to the daemon."""
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the exit code (fail, after a SIGKILL, if it does not come)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill(self.proc)
            raise DidNotExit(
                f"autoloopd did not exit within {timeout} s:\n{self.text()[-4000:]}"
            ) from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` and wait for the exit code."""
        try:
            return stop(self.proc, sig, timeout)
        except DidNotExit as exc:
            raise DidNotExit(f"{exc}:\n{self.text()[-4000:]}") from None

    def running(self) -> bool:
        """True while the daemon has not exited."""
        return self.proc.poll() is None and pid_alive(self.proc.pid)


def make_target(tmp_path: Path, name: str = "skill") -> tuple[Path, Path]:
    """A target directory and a (not yet existing) state root under tmp_path."""
    target = tmp_path / name
    target.mkdir()
    return target, tmp_path / "state"


class Lab:
    """One test's directories: skills (target dirs), the state dir and the config file."""

    def __init__(self, root: Path) -> None:
        """Create `skills/` and remember where everything goes under `root`."""
        self.root = root
        self.skills = root / "skills"
        self.skills.mkdir(parents=True, exist_ok=True)
        self.state_dir = root / "state"
        self.config = root / "autoloopd.toml"
        self.runs = 0

    def target(self, name: str, behaviour: str, *args: str, **keys: Any) -> dict[str, Any]:
        """A `[[targets]]` table for `name` (its directory is created) running the fake."""
        path = self.skills / name
        path.mkdir(exist_ok=True)
        return {
            "name": name,
            "path": str(path),
            "orchestrator": orchestrator_argv(behaviour, *args),
            **keys,
        }

    def state_root(self, name: str) -> Path:
        """The default state root of target `name`."""
        return self.state_dir / name

    def write(self, targets: Sequence[Mapping[str, Any]], **sections: Any) -> Path:
        """Write the config file with `daemon.state_dir` pointing into this layout."""
        daemon = {"state_dir": str(self.state_dir), **sections.pop("daemon", {})}
        return write_config(self.config, targets=targets, daemon=daemon, **sections)

    def start(self, *, env: Mapping[str, str] | None = None, args: Sequence[str] = ()) -> Daemon:
        """Start `autoloopd --config <this config>`; its output goes to a new file here."""
        self.runs += 1
        return Daemon(self.config, self.root / f"autoloopd-{self.runs}.out", env=env, args=args)

    def check_state_roots(self) -> None:
        """Invariants hold in every state root and no marked process is left running."""
        check_state_dir(self.state_dir)


def dry_target(lab: Lab, name: str, **keys: Any) -> dict[str, Any]:
    """A dry-run (simulator) target of `lab` that cools down for long after each iteration;
    `keys` override its table."""
    path = lab.skills / name
    path.mkdir(exist_ok=True)
    table = {
        "name": name,
        "path": str(path),
        "dry_run": True,
        "simulated_seconds": 0.05,
        "mode": "continuous",
        "cooldown_minutes": 600,
        "max_iterations": 50,
    }
    return {**table, **keys}
