"""Fixtures for the daemon end-to-end tests: TOML configs, a running autoloopd, its JSON log.

`write_config` turns plain dicts into a TOML file (no third-party writer needed). `Daemon`
wraps one real `autoloopd --config FILE` process started with `support.start_autoloopd`: it
parses the JSON log lines from its output file and waits on them with `support.wait_for`.
`NotifyListener` is a bound AF_UNIX datagram socket standing in for systemd's notify socket.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from support import (
    assert_invariants,
    marked_processes,
    orchestrator_argv,
    pid_alive,
    read_log,
    start_autoloopd,
    wait_for,
)

# --------------------------------------------------------------------------- TOML


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        assert math.isfinite(value)
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_table(header: str, table: Mapping[str, Any]) -> list[str]:
    lines = [header]
    lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return [*lines, ""]


def write_config(
    path: Path,
    *,
    targets: Sequence[Mapping[str, Any]],
    daemon: Mapping[str, Any] | None = None,
    budget: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Path:
    """Write a daemon config; `daemon` gets `log_format = "json"` unless it says otherwise."""
    lines = _toml_table("[daemon]", {"log_format": "json", **(daemon or {})})
    if budget:
        lines += _toml_table("[budget]", budget)
    if defaults:
        lines += _toml_table("[defaults]", defaults)
    for target in targets:
        lines += _toml_table("[[targets]]", target)
    tmp = path.with_name(path.name + ".writing")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)  # a reload never reads half a file
    return path


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
        roots = sorted(p for p in self.state_dir.iterdir() if p.is_dir())
        for root in roots:
            if (root / "autoloop_state.json").exists():
                assert_invariants(root)
        assert wait_for(
            lambda: not marked_processes(str(self.state_dir)),
            timeout=10.0,
            what="every orchestrator process to be gone",
        )


# --------------------------------------------------------------------------- the daemon


def parse_ts(text: str) -> datetime:
    """An ISO 8601 timestamp (log `timestamp`, state `next_run_at`) as an aware datetime."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Daemon:
    """A running `autoloopd --config FILE` and its JSON log."""

    def __init__(
        self,
        config: Path,
        out: Path,
        *,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        """Start the daemon; its stdout and stderr go to `out`."""
        self.config = config
        self.out = out
        self.started = time.monotonic()
        self.proc: subprocess.Popen[bytes] = start_autoloopd(
            ["--config", str(config), *args], out, env=env
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
        found = []
        for line in self.text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line still being written
            if event is not None and record.get("event") != event:
                continue
            if all(record.get(k) == v for k, v in match.items()):
                found.append(record)
        return found

    def wait_event(
        self, event: str, *, count: int = 1, timeout: float = 20.0, **match: Any
    ) -> list[dict[str, Any]]:
        """Wait until `event` (with `match`) was logged `count` times; fail early on exit."""

        def seen() -> list[dict[str, Any]] | None:
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
            seen, timeout=timeout, what=f"{count} x {event} {match}"
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
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"autoloopd did not exit within {timeout} s:\n{self.text()[-4000:]}"
            ) from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` and wait for the exit code."""
        self.send(sig)
        return self.wait(timeout)

    def running(self) -> bool:
        """True while the daemon has not exited."""
        return self.proc.poll() is None and pid_alive(self.proc.pid)


def max_overlap(events: Sequence[Mapping[str, Any]]) -> int:
    """The most iterations running at once, from the order of their started/finished events.

    An iteration is counted from its `iteration_started` to its `iteration_finished` line;
    both are logged while it holds its concurrency slot, so this never over-counts.
    """
    running: set[tuple[str, int]] = set()
    most = 0
    for record in events:
        key = (str(record.get("target")), int(record.get("iteration", 0)))
        if record.get("event") == "iteration_started":
            running.add(key)
            most = max(most, len(running))
        elif record.get("event") == "iteration_finished":
            running.discard(key)
    return most


def logged_cost(state_root: Path) -> float:
    """The sum of the costs in a state root's iteration log."""
    return math.fsum(entry["cost_usd"] for entry in read_log(state_root))


# --------------------------------------------------------------------------- sd_notify


class NotifyListener:
    """A bound AF_UNIX datagram socket playing systemd's $NOTIFY_SOCKET."""

    def __init__(self, directory: Path) -> None:
        """Bind in `directory`, or in a short temp dir when the path would be too long."""
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        path = directory / "notify.sock"
        if len(str(path).encode()) > 100:  # sun_path holds 108 bytes
            self._tmp = tempfile.TemporaryDirectory(prefix="al-")
            path = Path(self._tmp.name) / "n.sock"
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, list[str]]] = []

    def drain(self) -> list[tuple[float, list[str]]]:
        """Receive every waiting datagram; returns all messages so far (time, fields)."""
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.messages
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def fields(self) -> list[list[str]]:
        """The fields of every message received so far, in order."""
        return [fields for _, fields in self.drain()]

    def wait_for(
        self, predicate: Callable[[list[list[str]]], Any], timeout: float = 20.0, what: str = ""
    ) -> Any:
        """Wait until `predicate(all messages so far)` is truthy."""
        return wait_for(lambda: predicate(self.fields()), timeout=timeout, what=what)

    def close(self) -> None:
        """Close the socket and remove a temp dir."""
        self.sock.close()
        if self._tmp is not None:
            self._tmp.cleanup()
