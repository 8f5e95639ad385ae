"""The cluster schema, versioned: `init` creates it, `migrate` upgrades it, `check` reads it.

Each migration is a list of statements applied in one transaction with the version bump, so
a schema is never half-upgraded. A database whose version is newer than this autoloopd knows
is refused (an older daemon must not write to a schema it does not understand). Money is
`numeric` so sums are exact; times are the database's `now()`.
"""

from __future__ import annotations

from typing import Any

from autoloop_daemon.storage.postgres.db import ClusterError, Database

MIGRATIONS: list[list[str]] = [
    [  # 1: hosts, targets with leases, the iteration log, one budget with its reservations
        """CREATE TABLE hosts (
            id text PRIMARY KEY,
            seen_at timestamptz NOT NULL DEFAULT now())""",
        """CREATE TABLE targets (
            name text PRIMARY KEY,
            lease_holder text,
            lease_expires_at timestamptz,
            fencing_token bigint NOT NULL DEFAULT 0,
            handoff text,
            handoff_iteration integer)""",
        """CREATE TABLE iterations (
            target text NOT NULL REFERENCES targets(name),
            iteration integer NOT NULL CHECK (iteration > 0),
            host text NOT NULL,
            fencing_token bigint NOT NULL,
            cost_usd numeric NOT NULL CHECK (cost_usd >= 0),
            entry jsonb NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (target, iteration))""",
        """CREATE TABLE budgets (
            id text PRIMARY KEY,
            cap_usd numeric NOT NULL CHECK (cap_usd >= 0),
            spent_usd numeric NOT NULL DEFAULT 0,
            reserved_usd numeric NOT NULL DEFAULT 0)""",
        """CREATE TABLE reservations (
            id bigserial PRIMARY KEY,
            budget text NOT NULL REFERENCES budgets(id),
            target text NOT NULL REFERENCES targets(name),
            iteration integer NOT NULL,
            fencing_token bigint NOT NULL,
            host text NOT NULL,
            amount_usd numeric NOT NULL CHECK (amount_usd >= 0),
            rate_usd_per_s numeric NOT NULL DEFAULT 0,
            charged_usd numeric NOT NULL DEFAULT 0,
            state text NOT NULL DEFAULT 'open'
                CHECK (state IN ('open', 'settled', 'expired', 'late_settled')),
            created_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (target, iteration))""",
        """CREATE TABLE charges (
            id bigserial PRIMARY KEY,
            budget text NOT NULL REFERENCES budgets(id),
            amount_usd numeric NOT NULL CHECK (amount_usd >= 0),
            reason text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now())""",
    ],
    [  # 2: the daemon runs in cluster mode: a reservation per lease (a moved lease reserves
        # the same iteration number again), what every host must know of a target (finished
        # with which limits, the operator's flags, the last status its holder reported)
        "ALTER TABLE reservations DROP CONSTRAINT reservations_target_iteration_key",
        """ALTER TABLE reservations ADD CONSTRAINT reservations_lease_iteration
            UNIQUE (target, iteration, fencing_token)""",
        """ALTER TABLE targets
            ADD COLUMN finished_status text,
            ADD COLUMN finished_limits text,
            ADD COLUMN paused boolean NOT NULL DEFAULT false,
            ADD COLUMN run_now boolean NOT NULL DEFAULT false,
            ADD COLUMN stopped boolean NOT NULL DEFAULT false,
            ADD COLUMN status text,
            ADD COLUMN iterations_completed integer NOT NULL DEFAULT 0,
            ADD COLUMN total_cost_usd numeric NOT NULL DEFAULT 0,
            ADD COLUMN status_at timestamptz""",
        "ALTER TABLE hosts ADD COLUMN pid integer, ADD COLUMN stopped_at timestamptz",
    ],
    [  # 3: budget windows: a cap per window, held for the whole cluster like the lifetime cap
        """CREATE TABLE budget_windows (
            budget text NOT NULL REFERENCES budgets(id),
            starts_at timestamptz NOT NULL,
            cap_usd numeric NOT NULL CHECK (cap_usd >= 0),
            spent_usd numeric NOT NULL DEFAULT 0,
            reserved_usd numeric NOT NULL DEFAULT 0,
            PRIMARY KEY (budget, starts_at))""",
        "ALTER TABLE reservations ADD COLUMN window_start timestamptz",
    ],
    [  # 4: `ctl extend` for the whole cluster: the extension moves with the lease
        """ALTER TABLE targets
            ADD COLUMN extra_iterations integer NOT NULL DEFAULT 0,
            ADD COLUMN extra_cost_usd numeric NOT NULL DEFAULT 0""",
    ],
    [  # 5: the reservation wait path finds open reservations by index, not by a scan of
        # every reservation ever made (0.4-1.2 s a retry at 1 M rows, under the budget lock)
        """CREATE INDEX reservations_open ON reservations (budget, target)
            WHERE state = 'open'""",
    ],
    [  # 6: retention: a settled reservation's row is pruned once old and its entry recorded;
        # the entry's row keeps the evidence that its money was booked (retention.py)
        """ALTER TABLE iterations
            ADD COLUMN reservation_pruned boolean NOT NULL DEFAULT false""",
    ],
    [  # 7 (cluster reviews): a verdict given on any host, applied by the host running the
        # target; one verdict per candidate (the first wins), kept with what became of it
        """CREATE TABLE review_verdicts (
            target text NOT NULL REFERENCES targets(name),
            candidate_id text NOT NULL,
            verdict text NOT NULL CHECK (verdict IN ('approve', 'reject')),
            note text,
            who text NOT NULL,
            decided_at timestamptz NOT NULL DEFAULT now(),
            applied_at timestamptz,
            applied_by text,
            error text,
            PRIMARY KEY (target, candidate_id))""",
        """CREATE INDEX review_verdicts_unapplied ON review_verdicts (target)
            WHERE applied_at IS NULL""",
    ],
    [  # 8 (cluster review queues): each held target's pending candidates, published by its
        # holder under its fencing token, so every host lists the whole cluster's queue
        """CREATE TABLE review_queues (
            target text PRIMARY KEY REFERENCES targets(name),
            host text NOT NULL,
            fencing_token bigint NOT NULL,
            problem text,
            published_at timestamptz NOT NULL DEFAULT now())""",
        """CREATE TABLE review_pending (
            target text NOT NULL REFERENCES review_queues(target) ON DELETE CASCADE,
            review_id text NOT NULL,
            position integer NOT NULL,
            entry jsonb NOT NULL,
            PRIMARY KEY (target, review_id))""",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


async def _version(conn: Any) -> int | None:
    """The schema's version, or None when autoloopd's schema is absent."""
    cur = await conn.execute("SELECT to_regclass('autoloopd_schema') IS NOT NULL")
    row = await cur.fetchone()
    if not row[0]:
        return None
    cur = await conn.execute("SELECT version FROM autoloopd_schema")
    row = await cur.fetchone()
    return None if row is None else int(row[0])


def _refuse_newer(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise ClusterError(
            f"the database's schema is version {version}, newer than this autoloopd knows "
            f"({SCHEMA_VERSION}): upgrade autoloopd"
        )


async def migrate(db: Database, *, create: bool = True) -> tuple[int, int]:
    """Bring the schema up to SCHEMA_VERSION; (version before, after). 0 means none.

    With `create` False, an absent schema is an error (`db migrate` on an empty database).
    """

    async def work(conn: Any) -> tuple[int, int]:
        await conn.execute("SELECT pg_advisory_xact_lock(4242013)")  # one migrator at a time
        before = await _version(conn)
        if before is None:
            if not create:
                raise ClusterError("the database has no autoloopd schema: run autoloopd db init")
            await conn.execute("CREATE TABLE autoloopd_schema (version integer NOT NULL)")
            await conn.execute("INSERT INTO autoloopd_schema VALUES (0)")
            before = 0
        _refuse_newer(before)
        for statements in MIGRATIONS[before:]:
            for statement in statements:
                await conn.execute(statement)
        await conn.execute("UPDATE autoloopd_schema SET version = %s", (SCHEMA_VERSION,))
        return before, SCHEMA_VERSION

    return await db.run(work, timeout_s=60)


async def check(db: Database) -> int:
    """The schema's version; ClusterError when absent, older or newer than this autoloopd."""

    async def work(conn: Any) -> int | None:
        return await _version(conn)

    version = await db.run(work)
    if version is None:
        raise ClusterError("the database has no autoloopd schema: run autoloopd db init")
    _refuse_newer(version)
    if version < SCHEMA_VERSION:
        raise ClusterError(
            f"the database's schema is version {version}, older than this autoloopd's "
            f"({SCHEMA_VERSION}): run autoloopd db migrate"
        )
    return version
