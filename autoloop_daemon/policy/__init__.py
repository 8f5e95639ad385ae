"""The daemon's decisions as plain functions of plain data: stops, costs, ledger arithmetic,
windows, schedules, allocation, what follows a run.

Rule: pure: no I/O, no anyio, no clock of its own (time is an argument)."""
