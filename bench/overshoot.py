"""How far the shared budget's cap is passed when costs rise under concurrency.

The two cases of the money issue, each run through the real daemon on its own fresh state
directory: 50 targets, 32 iterations at once, a $10 cap.

* reported: the orchestrator reports its cost, $0.01 for each target's first three runs and
  then $0.50. The daemon sees no money accrue while a run goes on (no live cost), so the
  remaining bound is what the running iterations cost beyond their reservations.
* wall-time: the orchestrator reports no cost (as the real improvement-orchestrator); runs
  take 0.05 s for the first three, then 3 s, at $10/min. The daemon meters live cost and
  stops runs at the cap; the bound is what they cost during the termination grace.

Each case runs under both guarantees (`[budget] guarantee`): "soft" (the default) and "hard"
(every run reserves its worst case, `max_iteration_cost_usd` = $0.60, and a wall-time run is
stopped early enough that its grace fits). Prints spent / cap, the overshoot and the bound
docs/design.md states for the mode, and writes bench/results/overshoot.json.

    .venv/bin/python bench/overshoot.py [--quick] [--keep]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import common  # first: puts the repository on sys.path

from tests.helpers.config import write_config
from tests.helpers.process import run_autoloopd

CAP_USD = 10.0
TARGETS = 50
CONCURRENT = 32
GRACE_S = 1.0
RATE_USD_PER_MIN = 10.0
WORST_USD = 0.60  # max_iteration_cost_usd under guarantee = "hard" (the runs cost <= 0.50)
RESERVED_USD = 0.01  # estimated_cost_usd: what a soft run reserves before its history


def bound_usd(mode: str, guarantee: str) -> float:
    """docs/design.md's bound on the spend for the case (no flagged overage here)."""
    if guarantee == "hard":
        return CAP_USD
    if mode == "wall-time":  # every running iteration's grace at the rate
        return CAP_USD + CONCURRENT * RATE_USD_PER_MIN / 60.0 * GRACE_S
    # reported: every running iteration may cost its dearest run beyond its reservation
    return CAP_USD + CONCURRENT * (0.50 - RESERVED_USD)


ORCHESTRATOR = """\
import json, sys, time
iteration = int(sys.argv[sys.argv.index("--iteration") + 1])
early = iteration <= 3
mode = sys.argv[sys.argv.index("--mode") + 1]
if mode == "reported":
    print(json.dumps({"decision": "keep", "scores": {"a": 0.5},
                      "cost_usd": 0.01 if early else 0.50}))
else:
    time.sleep(0.05 if early else 3.0)
    print(json.dumps({"decision": "keep", "scores": {"a": 0.5}}))
"""


def run_case(work: Path, mode: str, guarantee: str, targets: int) -> dict[str, Any]:
    """One fleet until the budget stops it; the money logged against the cap."""
    script = work / "rising.py"
    script.write_text(ORCHESTRATOR)
    case = work / f"{mode}-{guarantee}"
    hard = {"max_iteration_cost_usd": WORST_USD} if guarantee == "hard" else {}
    names = [f"t{i:03d}" for i in range(targets)]
    for name in names:
        (case / "skills" / name).mkdir(parents=True)
    config = write_config(
        case / "config.toml",
        daemon={"state_dir": str(case / "state"), "max_concurrent_iterations": CONCURRENT,
                "shutdown_grace_seconds": 30},
        budget={"max_cost_usd": CAP_USD, "cost_per_minute_usd": RATE_USD_PER_MIN,
                "guarantee": guarantee},
        defaults={
            "mode": "single-run", "max_iterations": 1000, "max_cost_usd": 1000.0,
            "plateau_window": 1000, "oscillation_window": 0, "handoff_arg": "",
            "term_grace_seconds": GRACE_S, "estimated_cost_usd": RESERVED_USD, **hard,
            "orchestrator": [sys.executable, str(script), "--iteration", "{iteration}",
                             "--mode", mode],
        },
        targets=[{"name": n, "path": str(case / "skills" / n)} for n in names],
    )  # fmt: skip
    done = run_autoloopd(["--config", str(config)], timeout=600, cwd=case)
    spent = 0.0
    runs = 0
    for name in names:
        log = case / "state" / name / "iteration_log.jsonl"
        if log.exists():
            lines = [line for line in log.read_text().splitlines() if line]
            runs += len(lines)
            spent += math.fsum(__import__("json").loads(line)["cost_usd"] for line in lines)
    return {
        "mode": mode,
        "guarantee": guarantee,
        "bound_usd": round(bound_usd(mode, guarantee), 4),
        "exit_code": done.returncode,
        "runs": runs,
        "spent_usd": round(spent, 4),
        "cap_usd": CAP_USD,
        "over_usd": round(max(0.0, spent - CAP_USD), 4),
        "over_pct": round(100 * max(0.0, spent - CAP_USD) / CAP_USD, 1),
    }


def main() -> int:
    """Run both cases, print and save the figures."""
    p = common.parser(__doc__ or "")
    args = p.parse_args()
    targets = 20 if args.quick else TARGETS
    info = common.machine()
    common.print_machine(info)
    results = []
    with common.work_dir("overshoot", args.keep) as work:
        for mode in ("reported", "wall-time"):
            for guarantee in ("soft", "hard"):
                result = run_case(work, mode, guarantee, targets)
                results.append(result)
                print(
                    f"{mode:10s} {guarantee:4s} {result['runs']:4d} runs  spent "
                    f"${result['spent_usd']:.2f} of ${CAP_USD:.2f}  over "
                    f"${result['over_usd']:.2f} ({result['over_pct']}%)  bound "
                    f"${result['bound_usd']:.2f}"
                )
    path = common.write_results(
        common.result_name("overshoot", args.quick),
        {"machine": info, "targets": targets, "concurrent": CONCURRENT,
         "grace_s": GRACE_S, "cases": results},
    )  # fmt: skip
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
