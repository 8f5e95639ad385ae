"""Helpers shared by the tests and the benchmarks, each kind once.

- `wait`: wait on a condition with a timeout (sync, and async off the event loop).
- `process`: run and stop a real `autoloopd`, find the processes of a run, read /proc.
- `daemon`: `Daemon` (one running `autoloopd --config`) and `Lab` (one test's directories).
- `config`: the one TOML writer of daemon configs, and the small valid config texts.
- `notify`: the one listener standing in for systemd's $NOTIFY_SOCKET.
- `logs`: the one reader of the daemon's JSON log lines and of iteration_log.jsonl.
- `audit`: the one check of DESIGN.md's invariants on state roots.
- `fakes`: argv of the fake orchestrators in tests/fakes/.
- `blocking`: blockbuster, set up to fail a blocking call on the event loop.
- `hostile`: the one-target run, a state-root snapshot and the one stderr line, for tests
  that put hostile files in front of the binary.

Nothing here imports pytest: the benchmarks (`python bench/x.py`) use these modules too.
"""
