"""Subscribers to the engine's events and readers of its snapshot: the journal, the console
lines, the terminal's live view, metrics, systemd notifications and alerts.

Rule: observers never steer the engine; a slow or failing observer never stops a target."""
