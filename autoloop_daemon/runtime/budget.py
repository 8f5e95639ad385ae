"""The shared budget with waiting: a reservation that does not fit waits for settlements."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from autoloop_daemon.policy.budget import Ledger, Reservation


class SharedBudget:
    """The ledger shared by every target of a supervisor, with waiting for settlements."""

    def __init__(
        self,
        cap_usd: float,
        spent_usd: float = 0.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """Create the budget; `on_change` is called after every settlement, charge and new
        cap (it must not block). Nothing here can block or fail."""
        self.ledger = Ledger(cap_usd, spent_usd)
        self._changed = anyio.Event()
        self._on_change = on_change

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
        if self._on_change is not None:
            self._on_change()

    async def reserve(self, owner: str, amount_usd: float) -> Reservation | None:
        """Reserve `amount_usd`, waiting for running iterations to settle if needed.

        Returns None when the amount does not fit even with nothing else in flight: the
        caller stops its target with `stopped_budget`.
        """
        while True:
            reservation = self.ledger.reserve(owner, amount_usd)
            if reservation is not None:
                return reservation
            if self.ledger.open_reservations == 0:
                return None
            await self._changed.wait()

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Settle `reservation` with the real cost and wake anyone waiting to reserve."""
        self.ledger.settle(reservation, actual_usd)
        self._notify()

    def charge(self, amount_usd: float) -> None:
        """Charge money spent outside a reservation."""
        self.ledger.charge(amount_usd)
        self._notify()

    def set_cap(self, cap_usd: float) -> None:
        """Apply a new cap and wake waiters (they may fit now, or must give up)."""
        self.ledger.set_cap(cap_usd)
        self._notify()

    @property
    def spent_usd(self) -> float:
        """Money spent so far by every target together."""
        return self.ledger.spent_usd

    @property
    def cap_usd(self) -> float:
        """The shared cap."""
        return self.ledger.cap_usd
