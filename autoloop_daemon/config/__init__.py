"""The configuration: the TOML file and `AUTOLOOPD_*` overrides, validated into plain specs.

Rule: reads files and the environment only when asked to load; no anyio, no runtime state."""
