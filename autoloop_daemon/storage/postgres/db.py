"""Database calls that cannot hang the daemon: a pool, and every call shielded and timed.

psycopg waits up to 5 s for the server to cancel a query when its task is cancelled, and
anyio may cancel that wait again (PITFALLS): so each call runs in a shielded scope with its
own deadline, and a cancellation of the caller takes effect after the call returns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from autoloop_daemon.exceptions import ClusterError

__all__ = ["CALL_TIMEOUT_S", "ClusterError", "Database"]

T = TypeVar("T")

CALL_TIMEOUT_S = 10.0


def _require_psycopg() -> Any:
    try:
        import psycopg_pool
    except ImportError as exc:  # the optional extra is missing
        raise ClusterError(
            "cluster mode needs the optional extra: pip install 'autoloopd[cluster]'"
        ) from exc
    return psycopg_pool


class Database:
    """A connection pool on `dsn`; `run` executes one transaction function on it."""

    def __init__(
        self,
        dsn: str,
        *,
        max_size: int = 4,
        timeout_s: float = CALL_TIMEOUT_S,
        idle_in_transaction_s: float | None = None,
    ) -> None:
        """Describe the pool; nothing connects until `open`.

        `idle_in_transaction_s`: the server ends a transaction of ours that waits that long
        for its next statement (a frozen or partitioned host), releasing its row locks, so
        a host stopped in the middle of a transaction cannot stall every other host.
        """
        self.dsn = dsn
        self._max_size = max_size
        self.timeout_s = timeout_s
        self._options: dict[str, Any] = (
            {}
            if idle_in_transaction_s is None
            else {
                "options": "-c idle_in_transaction_session_timeout="
                f"{max(1, round(idle_in_transaction_s * 1000))}"
            }
        )
        self._pool: Any = None

    async def open(self) -> None:
        """Open the pool and wait for one connection (ClusterError if none within timeout)."""
        pool_mod = _require_psycopg()
        import psycopg

        try:  # one plain connection first: fails fast, with the server's own reason
            with anyio.CancelScope(shield=True), anyio.fail_after(self.timeout_s + 1):
                probe = await psycopg.AsyncConnection.connect(
                    self.dsn, connect_timeout=max(1, int(self.timeout_s)), **self._options
                )
                await probe.close()
        except (psycopg.Error, OSError, TimeoutError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClusterError(f"cannot connect to the cluster database: {reason}") from exc
        pool = pool_mod.AsyncConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self._max_size,
            open=False,
            timeout=self.timeout_s,
            kwargs=self._options,
            # After a database restart every pooled connection is broken: checked at checkout,
            # a broken one is replaced at once instead of failing one call each.
            check=pool_mod.AsyncConnectionPool.check_connection,
        )
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(self.timeout_s + 1):
                await pool.open(wait=True, timeout=self.timeout_s)
        except Exception as exc:
            with anyio.CancelScope(shield=True):
                await pool.close()
            raise ClusterError(f"cannot connect to the cluster database: {exc}") from exc
        self._pool = pool

    def companion(self, max_size: int = 1) -> Database:
        """A separate pool on the same server with the same settings (not opened): work
        that must never queue behind this pool's calls for a connection gets its own."""
        other = Database(self.dsn, max_size=max_size, timeout_s=self.timeout_s)
        other._options = dict(self._options)
        return other

    async def close(self) -> None:
        """Close the pool (idempotent)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.timeout_s):
                await pool.close()

    async def run(
        self, work: Callable[[Any], Awaitable[T]], *, timeout_s: float | None = None
    ) -> T:
        """Run `work(connection)` in one transaction, shielded, within `timeout_s`.

        Raises ClusterError when the database fails or the deadline passes (the
        transaction is then rolled back by the server: nothing half-done is kept).
        """
        if self._pool is None:
            raise ClusterError("the cluster database is not open")
        import psycopg

        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(limit):
                async with self._pool.connection() as conn, conn.transaction():
                    result = await work(conn)
        except TimeoutError as exc:
            raise ClusterError(f"the cluster database did not answer within {limit:g} s") from exc
        except (psycopg.Error, OSError) as exc:
            raise ClusterError(f"cluster database error: {exc}") from exc
        finally:
            await anyio.lowlevel.checkpoint_if_cancelled()
        return result
