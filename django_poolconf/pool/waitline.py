"""The line of checkouts waiting for a connection: first come, first served.

``QueuePool`` alone is not fair: a connection returned to a waiting thread can be taken
by a thread that arrives meanwhile (often the one that returned it, back for its next
request), and the robbed waiter queues again at the back, so under sustained load one
can wait past ``pool_timeout`` while others are served. Here a returned connection is
handed straight to the first in line (:meth:`WaitLine.hand_to_first`), and a newcomer
queues behind. The first in line is woken when room for a new connection is freed,
and also looks every :data:`POLL_S` seconds for what reached the pool without a
hand-over (a connection the garbage collector returned in a thread that held the
lock, say) and for what borrowers left behind.

The line is a part of the pool's state (:class:`~django_poolconf.pool.state.PoolState`)
and works under its lock. It knows nothing of pools: what a waiter takes is the
caller's business, so its logic is tested in process, with no server.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Generic, TypeVar

__all__ = ["POLL_S", "LineClosed", "LineTimeout", "Ticket", "WaitLine"]

#: How often the first in line looks for a connection that reached the pool unannounced.
POLL_S: Final = 0.05

T = TypeVar("T")


class LineTimeout(Exception):
    """No connection was handed over or taken before the deadline; out of the line."""


class LineClosed(Exception):
    """The pool was disposed of while waiting; out of the line.

    Whatever was handed over meanwhile is in the ticket: the caller closes it.
    """


class Ticket(threading.Event, Generic[T]):
    """A place in the line; ``item`` is set when a connection is handed over."""

    def __init__(self, began: float) -> None:
        super().__init__()
        self.began = began  # when its checkout began (monotonic seconds)
        self.item: T | None = None


class WaitLine(Generic[T]):
    """Waiting checkouts, oldest first, under the lock of the state it is part of.

    ``bool(line)`` (no lock) tells whether anybody waits: a checkout that finds the
    line empty takes a connection directly; one that finds it occupied joins it.
    Every method takes the lock, which is reentrant: the pool's state calls them
    while it holds it.
    """

    __slots__ = ("_tickets", "lock")

    def __init__(self, lock: threading.RLock | None = None) -> None:
        self.lock = threading.RLock() if lock is None else lock
        self._tickets: deque[Ticket[T]] = deque()

    def __len__(self) -> int:
        return len(self._tickets)

    def join(self, began: float) -> Ticket[T]:
        """Take a place in the line for a checkout that began at ``began``.

        In order of arrival: those who began waiting first come first, whichever of
        them noticed its turn to join first.
        """
        ticket: Ticket[T] = Ticket(began)
        with self.lock:
            tickets = self._tickets
            place = len(tickets)
            while place > 0 and tickets[place - 1].began > began:
                place -= 1
            tickets.insert(place, ticket)
            self._wake_first()
        return ticket

    def wait(
        self,
        ticket: Ticket[T],
        deadline: float,
        *,
        take: Callable[[], T | None],
        tidy: Callable[[bool], None],
        closed: Callable[[], bool],
    ) -> T:
        """Wait until ``ticket`` is handed an item, or takes one when first in line.

        ``take()`` runs under the lock, first in line only, and returns what
        it took or None. ``tidy(first)`` runs before every look, outside the lock
        (returning what borrowers left behind, say). ``closed()`` is read under the
        lock.

        :raises LineTimeout: at ``deadline``.
        :raises LineClosed: once ``closed()``; an item handed over meanwhile is in
            ``ticket.item``.
        Raising anything, the ticket may still hold an item handed over as it gave
        up: call :meth:`leave` and pass that on.
        """
        first = False
        while True:
            remaining = deadline - time.monotonic()
            ticket.wait(min(max(remaining, 0.0), POLL_S))
            tidy(first)
            with self.lock:
                handed = ticket.item
                if handed is not None:
                    # Handed over, and out of the line; unless the pool is being
                    # disposed of: then the caller closes it, outside the lock.
                    if closed():
                        raise LineClosed
                    return handed
                # Not served yet: sleep again until handed an item, made first in
                # line, or POLL_S has passed. (Cleared under the lock, which
                # hand_to_first() and wake_first() hold to set it.)
                ticket.clear()
                if closed():
                    self._remove(ticket)
                    raise LineClosed
                first = self._tickets[0] is ticket
                if first:
                    item = take()
                    if item is not None:
                        self._tickets.popleft()
                        self._wake_first()
                        return item
                if remaining <= 0:
                    self._remove(ticket)
                    raise LineTimeout

    def leave(self, ticket: Ticket[T]) -> T | None:
        """Leave the line, if still in it; return what was handed over meanwhile, if anything."""
        with self.lock:
            if ticket in self._tickets:
                self._remove(ticket)
            return ticket.item

    def hand_to_first(self, item: T) -> bool:
        """Hand ``item`` to the first in line; False if nobody waits."""
        with self.lock:
            if not self._tickets:
                return False
            ticket = self._tickets.popleft()
            ticket.item = item
            ticket.set()
            self._wake_first()
            return True

    def wake_first(self) -> None:
        """Wake the first in line to look again now (room was freed for it)."""
        with self.lock:
            self._wake_first()

    def _remove(self, ticket: Ticket[T]) -> None:
        self._tickets.remove(ticket)
        self._wake_first()

    def _wake_first(self) -> None:
        # Under the lock: wake the new first in line at once, not POLL_S later.
        if self._tickets:
            self._tickets[0].set()
