"""Where a target's state and log live: the `Storage`/`TargetStore` protocols (`base.py`) and
their backends (`files/`, `memory.py`, `postgres/`).

Rule: imports `policy/` and plain data only, never `runs/`, `engine/` or above; one contract test
suite runs every backend."""
