"""The engine: one `Supervisor` over many `TargetRunner`s, the shared budget, admission,
events, the snapshot and signals.

Rule: imports no backend by name (only `storage.base`) and nothing from `cluster/`,
`observers/`, `control/` or `cli/`; decisions come from `policy/`, I/O from `storage/` and `runs/`;
what happens is published as typed events."""
