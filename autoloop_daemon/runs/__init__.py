"""Running one iteration's programs: the orchestrator (or the simulator) and the scorer in their
own process groups, reading what they printed, hashing and keeping the target's files.

Rule: knows processes, the target's files and text, and writes its run logs through
`storage/files`' durable primitives; nothing of budgets, state or the engine."""
