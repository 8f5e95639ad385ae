"""A small real fleet run to its end: dry-run targets plus one that trips its breaker.

Shared by the report, alert and browser tests: `finished_fleet` writes the config into a
`Lab`, runs the real `autoloopd --config` to completion and returns what each target is
expected to show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tests.helpers.daemon import Lab
from tests.helpers.process import run_autoloopd

# name -> max_iterations of the dry-run (simulator) targets; every iteration has a score.
DRY_RUN_TARGETS: dict[str, int] = {"alpha": 3, "beta": 5}
BROKEN_TARGET = "gamma"  # its orchestrator crashes: one failure trips the breaker
SECRET = "sk-test-3c7e1d0a-never-shown"


def fleet_targets(lab: Lab, simulated_seconds: float = 0.01) -> list[dict[str, Any]]:
    """The `[[targets]]` tables of the fleet (directories created under the lab); each
    simulated iteration takes `simulated_seconds`."""
    targets: list[dict[str, Any]] = []
    for seed, (name, iterations) in enumerate(DRY_RUN_TARGETS.items()):
        path = lab.skills / name
        path.mkdir(exist_ok=True)
        targets.append(
            {
                "name": name,
                "path": str(path),
                "dry_run": True,
                "seed": seed,
                "max_iterations": iterations,
                "simulated_seconds": simulated_seconds,
            }
        )
    targets.append(
        lab.target(
            BROKEN_TARGET,
            "crash",
            max_consecutive_errors=1,
            backoff_base_seconds=0.1,
            env={"API_KEY": SECRET},  # must appear in no report, page or alert
        )
    )
    return targets


def finished_fleet(
    lab: Lab, *, alerts: Sequence[Mapping[str, Any]] = (), timeout: float = 90.0
) -> str:
    """Write the fleet's config and run `autoloopd --config` until every target stopped;
    returns its output (exit code 1: the broken target ended in `error`)."""
    lab.write(fleet_targets(lab), defaults={"mode": "single-run"}, alerts=alerts)
    done = run_autoloopd(["--config", str(lab.config)], timeout=timeout)
    assert done.returncode == 1, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr
