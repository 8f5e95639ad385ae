"""How well the shared budget is spent: fcfs against gain_per_usd, and an oracle.

Replays seeded fleet worlds (runs/fleet_world.py: 20 targets each, hidden true curves, a
noisy judge and keep decision, lognormal costs) through the product's own code: an
in-process `Supervisor` with the fleet-world simulator (simulated_seconds 0), the files
storage on a tmpfs directory, one concurrency slot, `[budget] allocation` "fcfs" (fair
turns: round robin among the waiting, the baseline) or "gain_per_usd", and today's stops
(25 iterations, plateau 3, oscillation 4). The budget is
2x, 4x and 12x the fleet's summed mean iteration cost. The oracle knows the true curves:
it gives each next iteration to the target with the highest true expected gain per dollar
(with the same noisy keep decision, so its limit is the 0.94 of ../shared/POLICY.md's
study, not 1.0).

Per budget it prints the true gain of gain_per_usd relative to fcfs (ratio of sums over
the worlds, with a paired bootstrap 95 % CI over worlds and the spread of the per-world
ratios: min/median/max), each policy's fraction of the
oracle's gain, gain per dollar, and the share of money spent on iterations that could not
help (the target's true score already at its ceiling). Writes bench/results/policy.json.

    .venv/bin/python bench/policy.py [--quick] [--worlds N] [--jobs N] [--json]
"""

from __future__ import annotations

import json
import math
import multiprocessing
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import common  # first: puts the repository on sys.path

from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.observers.logs import configure_logging
from autoloop_daemon.runs import fleet_world
from autoloop_daemon.storage.files.store import FileStorage

TARGETS = 20
MAX_ITERATIONS = 25
BUDGETS = (2, 4, 12)
POLICIES = ("fcfs", "gain_per_usd")
NOTHING_LEFT = 0.005  # a true score this close to its ceiling cannot improve
BOOTSTRAP = 2000


def names() -> list[str]:
    """The targets of a world."""
    return [f"t{i:02d}" for i in range(TARGETS)]


def fleet_mean_cost(seed: int) -> float:
    """The world's summed mean iteration cost (the budget's unit)."""
    return sum(fleet_world.world_target(seed, n).mean_cost_usd for n in names())


def outcome(seed: int, iterations: dict[str, int]) -> dict[str, float]:
    """The true gain, money and wasted money of the iterations each target ran."""
    gain = spent = wasted = 0.0
    for name, n in iterations.items():
        if n <= 0:
            continue
        world = fleet_world.world_target(seed, name)
        steps = fleet_world.trajectory(seed, name, n)
        gain += steps[-1].true_after - world.start
        for step in steps:
            spent += step.cost_usd
            if world.ceiling - step.true_before < NOTHING_LEFT:
                wasted += step.cost_usd
    return {"gain": gain, "spent": spent, "wasted": wasted}


def run_daemon(seed: int, budget_usd: float, allocation: str, base: Path) -> dict[str, int]:
    """Run the world through the real supervisor; completed iterations per target."""
    state = Path(tempfile.mkdtemp(dir=base))
    specs = [
        TargetSpec(
            name=name,
            path=base / "skills" / name,
            state_root=state / name,
            mode="continuous",
            cooldown_minutes=0.0,
            max_iterations=MAX_ITERATIONS,
            plateau_window=3,
            oscillation_window=4,
            dry_run=True,
            seed=seed,
            simulation="fleet",
            simulated_seconds=0.0,
        )
        for name in names()
    ]
    sup = Supervisor(
        specs, storage=FileStorage(state), budget_cap_usd=budget_usd, max_concurrent=1,
        grace_s=5.0, allocation=allocation,
    )  # fmt: skip
    anyio.run(sup.run)
    done = {t.target: t.iterations_completed for t in sup.snapshot().targets}
    shutil.rmtree(state, ignore_errors=True)
    return done


def run_oracle(seed: int, budget_usd: float) -> dict[str, int]:
    """Greedy by true expected gain per dollar, the same noisy keep decision."""
    done = dict.fromkeys(names(), 0)
    left = budget_usd
    while True:
        best_name, best_rate = None, 0.0
        for name, n in done.items():
            if n >= MAX_ITERATIONS:
                continue
            world = fleet_world.world_target(seed, name)
            cur = fleet_world.trajectory(seed, name, n)[-1].true_after if n else world.start
            rate = world.expected_gain(cur) / world.mean_cost_usd
            if rate > best_rate:
                best_name, best_rate = name, rate
        if best_name is None:
            return done
        cost = fleet_world.trajectory(seed, best_name, done[best_name] + 1)[-1].cost_usd
        if cost > left:
            return done
        left -= cost
        done[best_name] += 1


def one_world(args: tuple[int, str]) -> dict[str, Any]:
    """Every policy and the oracle at every budget for world `seed`."""
    seed, base_text = args
    base = Path(base_text)
    configure_logging("json", "error", stream=open("/dev/null", "w"))  # noqa: SIM115
    unit = fleet_mean_cost(seed)
    result: dict[str, Any] = {"seed": seed}
    for k in BUDGETS:
        budget = k * unit
        row = {p: outcome(seed, run_daemon(seed, budget, p, base)) for p in POLICIES}
        row["oracle"] = outcome(seed, run_oracle(seed, budget))
        result[str(k)] = row
    return result


def bootstrap_ratio(pairs: list[tuple[float, float]], rng: random.Random) -> list[float]:
    """A paired bootstrap 95 % CI of sum(new) / sum(old) over worlds."""
    ratios = []
    for _ in range(BOOTSTRAP):
        sample = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        old = sum(o for o, _ in sample)
        ratios.append(sum(n for _, n in sample) / old if old > 0 else math.nan)
    ratios = sorted(r for r in ratios if not math.isnan(r))
    return [ratios[int(0.025 * len(ratios))], ratios[int(0.975 * len(ratios)) - 1]]


def spread(pairs: list[tuple[float, float]]) -> list[float]:
    """min, median and max over worlds of each world's ratio (gain_per_usd / fcfs)."""
    ratios = sorted(n / o for o, n in pairs if o > 0)
    if not ratios:
        return []
    return [round(r, 3) for r in (ratios[0], ratios[len(ratios) // 2], ratios[-1])]


def summarise(worlds: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures per budget."""
    rng = random.Random(12)
    budgets: dict[str, Any] = {}
    for k in map(str, BUDGETS):
        total = {p: {"gain": 0.0, "spent": 0.0, "wasted": 0.0} for p in (*POLICIES, "oracle")}
        for w in worlds:
            for p, figures in w[k].items():
                for key, value in figures.items():
                    total[p][key] += value
        old, new, oracle = total["fcfs"], total["gain_per_usd"], total["oracle"]["gain"]
        pairs = [(w[k]["fcfs"]["gain"], w[k]["gain_per_usd"]["gain"]) for w in worlds]
        budgets[k] = {
            "ratio": round(new["gain"] / old["gain"], 4) if old["gain"] > 0 else None,
            "ratio_ci": [round(r, 4) for r in bootstrap_ratio(pairs, rng)],
            "ratio_spread": spread(pairs),
            "fraction_of_oracle": round(new["gain"] / oracle, 4) if oracle > 0 else None,
            "gain_per_usd": round(new["gain"] / new["spent"], 4) if new["spent"] else None,
            "wasted_share": round(new["wasted"] / new["spent"], 4) if new["spent"] else None,
            "fcfs": {
                "fraction_of_oracle": round(old["gain"] / oracle, 4) if oracle > 0 else None,
                "gain_per_usd": round(old["gain"] / old["spent"], 4) if old["spent"] else None,
                "wasted_share": round(old["wasted"] / old["spent"], 4) if old["spent"] else None,
            },
            "oracle_gain_per_usd": round(oracle / total["oracle"]["spent"], 4)
            if total["oracle"]["spent"]
            else None,
        }
    return {"budgets": budgets, "worlds": len(worlds)}


def main() -> int:
    """Run the benchmark; print the table (or the JSON object with --json)."""
    p = common.parser("fcfs vs gain_per_usd allocation on seeded fleet worlds")
    p.add_argument("--worlds", type=int, default=None, help="worlds to replay (200; quick 6)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args()
    n = args.worlds or (6 if args.quick else 200)
    base = Path(tempfile.mkdtemp(prefix="autoloopd-bench-policy-", dir=_tmpfs()))
    for name in names():
        (base / "skills" / name).mkdir(parents=True)
    t0 = time.monotonic()
    try:
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            worlds = pool.map(one_world, [(seed, str(base)) for seed in range(n)], chunksize=1)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    summary = summarise(worlds)
    elapsed = time.monotonic() - t0
    data = {
        **summary,
        "quick": args.quick,
        "targets_per_world": TARGETS,
        "elapsed_s": round(elapsed, 1),
        "machine": common.machine(),
    }
    common.write_results("policy", data)
    plot_path = plot(summary, args.quick)
    if args.json:
        print(json.dumps(summary))
        return 0
    common.print_machine(data["machine"])
    print(f"{n} worlds x {TARGETS} targets, {elapsed:.0f} s")
    rows = []
    for k, b in summary["budgets"].items():
        rows.append(
            [
                f"{k}x",
                b["ratio"],
                f"[{b['ratio_ci'][0]}, {b['ratio_ci'][1]}]",
                "/".join(map(str, b["ratio_spread"])),
                b["fraction_of_oracle"],
                b["fcfs"]["fraction_of_oracle"],
                b["gain_per_usd"],
                b["fcfs"]["gain_per_usd"],
                b["wasted_share"],
                b["fcfs"]["wasted_share"],
            ]
        )
    headers = [
        "budget", "ratio", "95% CI", "worlds min/med/max", "of oracle", "fcfs of oracle",
        "gain/$", "fcfs gain/$", "wasted", "fcfs wasted",
    ]  # fmt: skip
    print(common.table(headers, rows))
    print("(oracle: true curves, same noisy keep decision; its limit in the study was 0.94)")
    print(f"plot: {plot_path}" if plot_path else "plot: skipped (pip install '.[bench]')")
    return 0


def plot(summary: dict[str, Any], quick: bool) -> Path | None:
    """Fraction of the oracle's gain per budget, fcfs beside gain_per_usd (None without
    matplotlib)."""
    plt = common.pyplot()
    if plt is None:
        return None
    budgets = list(summary["budgets"])
    fcfs = [summary["budgets"][k]["fcfs"]["fraction_of_oracle"] for k in budgets]
    ranked = [summary["budgets"][k]["fraction_of_oracle"] for k in budgets]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(budgets))
    ax.bar([x - 0.2 for x in xs], fcfs, width=0.4, label="fcfs")
    ax.bar([x + 0.2 for x in xs], ranked, width=0.4, label="gain_per_usd")
    for x, k in zip(xs, budgets, strict=True):
        b = summary["budgets"][k]
        ax.annotate(f"x{b['ratio']:.2f}", (x + 0.2, b["fraction_of_oracle"]),
                    ha="center", va="bottom", fontsize=9)  # fmt: skip
    ax.set_xticks(list(xs), [f"{k}x mean cost" for k in budgets])
    ax.set_ylabel("fraction of the oracle's true gain")
    ax.set_ylim(0, 1)
    ax.set_title(f"Allocation policies, {summary['worlds']} seeded fleet worlds")
    ax.legend(loc="lower right")
    return common.save_plot(plt, fig, "policy", quick)


def _tmpfs() -> str | None:
    """/dev/shm when there is one (fsync is cheap there), else the default."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


if __name__ == "__main__":
    sys.exit(main())
