"""Talking to a running daemon's control API from tests: `ctl` runs `autoloopd ctl`, `api`
sends one HTTP request over the unix socket and returns (status, JSON)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from autoloop_daemon.cli.client import request
from tests.helpers.process import run_autoloopd


def ctl(config: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`autoloopd ctl --config CONFIG ARGS...`, run to completion."""
    return run_autoloopd(["ctl", "--config", str(config), *args], timeout=timeout)


def api(sock: Path, method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """One request to the daemon on `sock`: (HTTP status, decoded JSON)."""
    return request(sock, method, url, body, timeout=30.0)


def target_status(sock: Path, name: str) -> dict[str, Any]:
    """Target `name`'s entry of `GET /api/status`."""
    code, payload = api(sock, "GET", "/api/status")
    assert code == 200, payload
    by_name = {t["target"]: t for t in payload["targets"]}
    return dict(by_name[name])
