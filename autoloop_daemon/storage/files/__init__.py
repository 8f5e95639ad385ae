"""The files backend: crash-safe state roots (lock, log, state, handoffs) on a local disk.

Rule: every write is durable before it is acknowledged (fsync, atomic replace, directory sync)."""
