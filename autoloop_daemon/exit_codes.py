"""The process exit codes of every autoloopd command, in one place (sysexits.h where one fits)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_TARGET_ERROR = 1  # a target ended in `error` (circuit breaker) or could not start
EXIT_USAGE = 2  # bad command-line usage, or an unknown target named on the command line
EXIT_NOT_RUNNING = 3  # `status` / `ctl`: no daemon answers (as `systemctl status`)
EXIT_REFUSED = 4  # `ctl`: the command does not apply to the target now (e.g. it is stopped)
EXIT_DATAERR = 65  # a state or log file is corrupt (left untouched)
EXIT_IOERR = 74  # a checkpoint could not be written
EXIT_TEMPFAIL = 75  # another autoloopd owns the state root
EXIT_NOPERM = 77  # `ctl`: the socket or token refused us
EXIT_CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus
EXIT_INTERRUPTED = 130  # Ctrl+C before the signal handler was installed
EXIT_PIPE = 141  # stdout's reader went away (`status --all | head`): 128 + SIGPIPE, as a shell says
