"""autoloopd: keeps AI improvement loops running unattended, crash-safe and within budget."""

__version__ = "0.1.0"
