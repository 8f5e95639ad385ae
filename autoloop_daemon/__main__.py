"""Entry point for ``python -m autoloop_daemon``."""

from autoloop_daemon.cli import main

raise SystemExit(main())
