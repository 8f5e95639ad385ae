"""Loading a config of N targets (`load_config`), in-process, against parsing its TOML.

Part of READY at 10,000 targets (`check.py`): the daemon loads its config before it locks
the roots. Timed in this process, 5 rounds (`--quick`: 3 rounds of 1,000 targets), each
against its floor in the same round: `tomllib.loads` of the same file, which any load
pays (the config is TOML; the standard library's parser is pure Python).

    .venv/bin/python bench/config_load.py [--quick] [--targets N]
"""

from __future__ import annotations

import os
import time
import tomllib

import common  # first: puts the repository on sys.path


def main() -> None:
    """Print min / median / max of the load, its floor and their ratio."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--targets", type=int, default=None, help="targets in the config")
    args = p.parse_args()
    n = args.targets or (1000 if args.quick else 10_000)
    rounds = 3 if args.quick else 5
    from autoloop_daemon.config.loader import load_config

    with common.work_dir("config-load", args.keep) as work:
        config = common.idle_config(work, n)
        text = config.read_text()
        loads, floors = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            tomllib.loads(text)
            floors.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            load_config(config)
            loads.append(time.perf_counter() - t0)
    ratios = [v / f for v, f in zip(loads, floors, strict=True)]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"config_load: {n} targets, {rounds} rounds, load average {load}")
    print(f"load_config        {common.min_median_max(loads, 3)} s")
    print(f"floor (TOML parse) {common.min_median_max(floors, 3)} s")
    print(f"ratio              {common.min_median_max(ratios, 2)}x")
    common.write_results(
        common.result_name("config_load", args.quick),
        {"machine": common.machine(), "targets": n, "load_s": loads, "floor_s": floors},
    )


if __name__ == "__main__":
    main()
