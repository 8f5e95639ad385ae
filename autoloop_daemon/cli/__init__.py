"""The `autoloopd` command: parsing, the forms and subcommands, and the composition root.

Rule: the top layer. It may import every package; nothing imports it. `status` and `ctl` import
only what they need (no pydantic, structlog or anyio when a daemon answers)."""
