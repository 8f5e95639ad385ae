"""Errors autoloopd raises, each named for its condition."""

from __future__ import annotations


class AutoloopError(Exception):
    """Base class of every error autoloopd reports to its user."""


class ConfigError(AutoloopError):
    """The configuration (file, environment or flags) does not validate; the message is one line."""


class StateLockedError(AutoloopError):
    """Another process owns the state root (holds its lock file)."""


class StateCorruptError(AutoloopError):
    """A state or log file cannot be read safely; it is left untouched."""


class StateWriteError(AutoloopError):
    """A checkpoint could not be written (disk full, read-only); the previous file is intact."""


class FencedWriteError(StateWriteError):
    """Cluster mode: a write under a lease (fencing token) that is no longer the target's was
    refused; the local journal keeps it and its real cost is booked."""


class ClusterError(AutoloopError):
    """Cluster mode: the database cannot be reached, refused a statement, or has the wrong
    schema."""


class ResultError(AutoloopError):
    """The orchestrator's or scorer's output is present but invalid."""


class RunLogError(AutoloopError):
    """A run's log file cannot be opened for appending (not a regular file, no permission)."""


class NotRegularFileError(OSError):
    """A path autoloopd reads or writes is a FIFO, socket, device, directory or symlink."""


class LogLineIncompleteError(ValueError):
    """A log line is not a whole entry (not JSON, not an object, a field missing).

    On the last line this is what a write cut short leaves (a torn tail); anywhere else, and
    any line that is whole but holds a wrong value, is corruption.
    """


class UnknownTargetError(AutoloopError):
    """A command named a target the daemon does not have."""


class CommandRefusedError(AutoloopError):
    """A control command does not apply to the target as it is now (e.g. pause a stopped one)."""


class AlertDeliveryError(AutoloopError):
    """An alert command or webhook failed (non-zero exit, timeout, HTTP error); one line."""
