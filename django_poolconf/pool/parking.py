"""Connections parked with the Django connection object that returned them.

With ``thread_affinity``, a Django connection object that returns its connection at
the end of a request keeps it parked under its key (its loan): idle, reset, and taken
back by the same object at its next request without a trip through the pool. Anybody
who needs a connection when no other is idle steals the oldest parked one, whose owner
is the least likely to be back for it.

The lot is a part of the pool's state (:class:`~django_poolconf.pool.state.PoolState`):
parking and stealing happen under the state's lock. The owner and its finalizer
(which may run in any thread, at any allocation, even while that lock is held) take
an entry back with one dict pop, atomic in CPython, without the lock: whoever pops an
entry has it.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["ParkingLot"]

K = TypeVar("K")
T = TypeVar("T")


class ParkingLot(Generic[K, T]):
    """Parked connections by owner key, oldest first."""

    __slots__ = ("_parked",)

    def __init__(self) -> None:
        self._parked: dict[K, T] = {}

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, key: K, item: T) -> None:
        """Park ``item`` for ``key``'s owner."""
        self._parked[key] = item

    def take_back(self, key: K) -> T | None:
        """The item parked under ``key``, unparked; None if somebody took it."""
        return self._parked.pop(key, None)

    def steal_oldest(self) -> T | None:
        """The item parked longest, unparked; None when none is left to take."""
        parked = self._parked
        while parked:
            try:
                key = next(iter(parked))
            except (StopIteration, RuntimeError):  # emptied, or changed meanwhile
                continue
            item = parked.pop(key, None)
            if item is not None:
                return item
        return None

    def snapshot(self) -> list[T]:
        """What is parked now, oldest first (a copy)."""
        return list(self._parked.copy().values())

    def forget(self) -> list[T]:
        """Empty the lot without unparking anything, and return what it held.

        For a forked child: the parent's connections are kept referenced, never used.
        """
        parked, self._parked = self._parked, {}
        return list(parked.values())
