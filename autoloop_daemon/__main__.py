"""Entry point for ``python -m autoloop_daemon``."""

from autoloop_daemon.cli.main import main

raise SystemExit(main())
