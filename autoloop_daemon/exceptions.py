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


class ResultError(AutoloopError):
    """The orchestrator's or scorer's output is present but invalid."""


class UnknownTargetError(AutoloopError):
    """A command named a target the daemon does not have."""


class CommandRefusedError(AutoloopError):
    """A control command does not apply to the target as it is now (e.g. pause a stopped one)."""


class AlertDeliveryError(AutoloopError):
    """An alert command or webhook failed (non-zero exit, timeout, HTTP error); one line."""
