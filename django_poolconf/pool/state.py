"""The state of one engine's pool, with its one lock.

Everything a checkout or a checkin reads and changes lives in a :class:`PoolState` and
changes under :attr:`PoolState.lock`, as psycopg_pool keeps its idle connections and
its waiting clients under one lock: the idle records, how many are open (SQLAlchemy's
``overflow``), the line of waiting checkouts (:class:`~.waitline.WaitLine`), the
records parked with their Django connection objects (:class:`~.parking.ParkingLot`)
and the :class:`~django_poolconf.stats.Counters`. A section under the lock does no
I/O, logs nothing and calls no code of the user's: opening, checking, resetting and
closing connections happen outside it, in the :class:`~.lender.Lender`. Records are
opaque here, so the logic is tested in process, without a server.

The lock is reentrant, as SQLAlchemy's pool queue and psycopg_pool's lock are: the
garbage collector may return a SQLAlchemy connection (and count it) in a thread that
holds it. Two writes happen without it, each one atomic operation:

* the owner of a parked record takes it back with one dict pop
  (:meth:`~.parking.ParkingLot.take_back`): whoever pops it has it;
* a checkin that the garbage collector runs inside a section of this same thread
  appends its record to the idle ones (one deque append) rather than nest in a
  section that may be halfway through the line; the first in line finds it at its
  next look. When ``pool_size`` records are idle already, or the pool is retired,
  the record is closed instead, as SQLAlchemy's ``QueuePool`` does, and its room
  given back with one decrement of the open count, waking nobody.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Final, Generic, TypeVar

from django_poolconf.pool.parking import ParkingLot
from django_poolconf.pool.waitline import Ticket, WaitLine
from django_poolconf.stats import Counters

__all__ = ["HANDED", "OPEN", "PARKED", "Life", "Outcome", "PoolState"]

R = TypeVar("R")


class Outcome:
    """What a checkout took, or what became of a return, when not a record."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Taken by a checkout: room for one more connection, reserved. Open one, or give
#: the room back with :meth:`PoolState.closed` if opening fails.
OPEN: Final = Outcome("OPEN")
#: A return went straight to the first in line.
HANDED: Final = Outcome("HANDED")
#: A return was parked with its Django connection object.
PARKED: Final = Outcome("PARKED")


class Life:
    """Whether an engine was retired by a dispose, and when it was last drained.

    Read on every checkout and return. ``drained_at`` is wall-clock seconds
    (:func:`time.time`, as SQLAlchemy dates a connection's opening): a connection
    opened by then is closed when it is returned.
    """

    __slots__ = ("drained_at", "retired")

    def __init__(self) -> None:
        self.retired = False
        self.drained_at = 0.0


class PoolState(Generic[R]):
    """One engine's pool: idle, open, waiting and parked records, and counters, under one lock.

    ``pool_size`` records at most stay idle (parked ones count as idle), and at most
    ``pool_size + max_overflow`` are open. Idle records are lent most recently
    returned first, which keeps the busiest connections inside the pre-ping's
    window and lets the others age until recycled.
    """

    __slots__ = (
        "counters",
        "idle",
        "life",
        "line",
        "lock",
        "max_overflow",
        "max_waiting",
        "overflow",
        "parked",
        "pool_size",
    )

    def __init__(
        self,
        pool_size: int,
        max_overflow: int,
        life: Life | None = None,
        counters: Counters | None = None,
        max_waiting: int = 0,
    ) -> None:
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.max_waiting = max_waiting  # 0: any number may wait
        self.life = Life() if life is None else life
        self.counters = Counters() if counters is None else counters
        self._start()

    def _start(self) -> None:
        self.lock = threading.RLock()
        self.idle: deque[R] = deque()
        # Records open beyond pool_size: negative while fewer are open, as
        # SQLAlchemy's QueuePool reports it.
        self.overflow = -self.pool_size
        self.line: WaitLine[R | Outcome] = WaitLine(self.lock)
        self.parked: ParkingLot[object, R] = ParkingLot()
        self.counters.reset(self.lock)

    # -- checkout ------------------------------------------------------------------

    def checkout(self) -> R | Outcome | None:
        """An idle record, else a parked one, else :data:`OPEN`; None to wait in line.

        None when others wait already (first come, first served) or the pool is at
        capacity: then :meth:`join` the line and :meth:`wait`.
        """
        with self.lock:
            if self.line:
                return None
            return self._take()

    def _take(self) -> R | Outcome | None:
        # Under the lock: what a checkout takes, in order of preference.
        idle = self.idle
        if idle:
            return idle.pop()
        if self.parked:
            # A parked connection is idle too: take it rather than open another.
            record = self.parked.steal_oldest()
            if record is not None:
                return record
        if self.overflow < self.max_overflow:
            self.overflow += 1
            return OPEN
        return None

    def take_idle(self) -> R | None:
        """An idle or parked record, when nobody waits; never :data:`OPEN` (for health probes)."""
        with self.lock:
            if self.line:
                return None
            if self.idle:
                return self.idle.pop()
            return self.parked.steal_oldest() if self.parked else None

    def join(self, began: float) -> Ticket[R | Outcome] | None:
        """A place in the line for a checkout that began at ``began`` (monotonic seconds).

        None when ``max_waiting`` checkouts wait already: fail this one at once.
        """
        with self.lock:
            if self.max_waiting and len(self.line) >= self.max_waiting:
                return None
            return self.line.join(began)

    def wait(
        self,
        ticket: Ticket[R | Outcome],
        deadline: float,
        tidy: Callable[[bool], None],
    ) -> R | Outcome:
        """Wait in line for a record, or :data:`OPEN`; see :meth:`.WaitLine.wait`.

        :raises LineTimeout: at ``deadline``.
        :raises LineClosed: once the pool is retired.
        """
        return self.line.wait(
            ticket, deadline, take=self._take, tidy=tidy, closed=self._retired
        )

    def _retired(self) -> bool:
        return self.life.retired

    def closed(self, count: int = 1) -> None:
        """Give back the room of ``count`` records that were closed, or never opened.

        The first in line is woken to use it; unless this thread is inside a section
        already (a connection the garbage collector returned): then it finds the room
        at its next look.
        """
        nested = self.lock._is_owned()  # type: ignore[attr-defined]
        with self.lock:
            self.overflow -= count
            if not nested:
                self.line.wake_first()

    # -- checkin -------------------------------------------------------------------

    def checkin_loan(
        self, record: R, park: object, held: float | None
    ) -> Outcome | None:
        """A borrower's record, reset: count it held ``held`` seconds; hand it over or park it.

        To the first in line (:data:`HANDED`), else parked under the key ``park``
        (:data:`PARKED`) while fewer than ``pool_size`` records are idle. None when
        neither: :meth:`checkin` it (through the pool, which fires its ``checkin``
        event). A retired pool neither hands over nor parks.
        """
        with self.lock:
            if held is not None:
                self.counters.add_checkin(held)
            if self.life.retired:
                return None
            if self.line:
                self.line.hand_to_first(record)
                return HANDED
            if park is not None and len(self.idle) + len(self.parked) < self.pool_size:
                self.parked.park(park, record)
                return PARKED
            return None

    def hand_to_first(self, record: R) -> bool:
        """Hand ``record`` to the first in line; False if nobody waits."""
        return bool(self.line) and self.line.hand_to_first(record)

    def checkin(self, record: R) -> bool:
        """Take ``record`` back: to the first in line, or idle; False to close it.

        False when ``pool_size`` records are idle already (it is an overflow one) or
        the pool is retired: close it, then give its room back with :meth:`closed`.
        """
        if self.lock._is_owned():  # type: ignore[attr-defined]
            # The garbage collector returns a connection inside a section of this
            # thread: never nest in it (see the module's docstring). Still, no more
            # than pool_size stay idle, and none in a retired pool: the caller
            # closes it, and closed() gives its room back without waking anyone.
            if self.life.retired or len(self.idle) + len(self.parked) >= self.pool_size:
                return False
            self.idle.append(record)
            return True
        with self.lock:
            if self.life.retired:
                return False
            if self.line:
                self.line.hand_to_first(record)
                return True
            if len(self.idle) + len(self.parked) < self.pool_size:
                self.idle.append(record)
                return True
            return False

    # -- dispose and fork ----------------------------------------------------------

    def take_all(self) -> list[R]:
        """Every idle and parked record, taken to be closed: the pool is disposed of."""
        taken: list[R] = []
        with self.lock:
            idle = self.idle
            while idle:
                taken.append(idle.pop())
            parked = self.parked
            while parked:
                record = parked.steal_oldest()
                if record is None:
                    break
                taken.append(record)
        return taken

    def forget_fork_state(self) -> list[R]:
        """In a forked child: start empty, with a new lock and zero counters.

        Return the parent's idle and parked records: keep them referenced, never
        use or close them. Records the parent had lent are not counted any more.
        """
        inherited = [*self.idle, *self.parked.forget()]
        self._start()
        return inherited

    # -- numbers -------------------------------------------------------------------

    def numbers(self) -> tuple[int, int, int, int, int]:
        """``pool_size``, idle (parked included), checked out, overflow, and waiting."""
        with self.lock:
            idle = len(self.idle) + len(self.parked)
            return (
                self.pool_size,
                idle,
                self.pool_size + self.overflow - idle,
                self.overflow,
                len(self.line),
            )
