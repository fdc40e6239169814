"""The lender: lends a pool's connections to Django and checks them on the way out and in.

Django's wrapper checks the pool's records out directly (:meth:`Lender.borrow`,
:meth:`Lender.give_back`), without the proxy object, weak reference and event
dispatches SQLAlchemy adds to every checkout; SQLAlchemy code checks out through
``engine.connect()``, and the pool (:class:`~django_poolconf.pool.sqla.LendingPool`)
and its listeners call the same lender. Both kinds of borrower wait in one
:class:`~django_poolconf.pool.waitline.WaitLine` and share the
:class:`~django_poolconf.pool.parking.ParkingLot`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Final, cast

from sqlalchemy import exc
from sqlalchemy.pool import ConnectionPoolEntry

from django_poolconf import signals, stats
from django_poolconf.conf.pool import PoolSettings
from django_poolconf.pool import sqla
from django_poolconf.pool.hooks import (
    INFO_BORROWED_AT,
    INFO_FRESH,
    INFO_HELD,
    INFO_NEW,
    ConnectionHooks,
)
from django_poolconf.pool.orphans import ORPHANS, PARKED, REAPER, return_orphans
from django_poolconf.pool.ownership import INHERITED, refuse_foreign
from django_poolconf.pool.parking import ParkingLot
from django_poolconf.pool.policy import CheckPolicy, Life
from django_poolconf.pool.waitline import LineClosed, LineTimeout, WaitLine
from django_poolconf.signals import Invalidation
from django_poolconf.stats import PoolStats

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool.base import _ConnectionRecord

__all__ = ["Lender"]

# The logger these messages always went to (documented), from before the pool package.
logger = logging.getLogger("django_poolconf.engines")


class _Slot:
    """What the first in line takes when it reserved room for a new connection."""


#: Taken by the first in line under the line's lock; the connection is opened outside it.
_SLOT: Final = _Slot()


class Lender(CheckPolicy):
    """Lends an engine's pooled connections, and checks them on the way out and in.

    SQLAlchemy code borrows through ``engine.connect()``, and the pool's listeners
    call :meth:`check_out` and :meth:`check_in`. Django's wrapper borrows the pool's
    entries directly with :meth:`borrow` and :meth:`give_back`: the same checks,
    without the proxy object, weak reference and event dispatches SQLAlchemy adds to
    every checkout. So for Django's checkouts the pool fires ``connect``,
    ``invalidate`` and ``checkin`` events, but not ``checkout`` or ``reset``; and not
    ``checkin`` either for a connection parked (``thread_affinity``) or handed
    straight to a waiter.
    """

    __slots__ = (
        "__weakref__",
        "affinity",
        "borrowed",
        "engine",
        "line",
        "parked",
        "pid",
    )

    def __init__(
        self,
        engine: Engine,
        settings: PoolSettings,
        hooks: ConnectionHooks,
        life: Life,
    ) -> None:
        super().__init__(settings, hooks, life)
        self.engine = engine
        # Checkouts waiting for a connection, Django's and SQLAlchemy code's.
        self.line: WaitLine[_ConnectionRecord | _Slot] = WaitLine()
        # Connections kept by the Django connection object that returned them, by
        # its loan: idle, and taken by whoever needs one when no other is idle.
        self.parked: ParkingLot[object, _ConnectionRecord] = ParkingLot()
        # Django's loans, with the thread that borrowed (None for a connection object
        # shared between threads): whoever pops a loan's entry, its owner closing it,
        # its finalizer or the reaper (its thread ended), returns the connection.
        self.borrowed: dict[
            object, tuple[_ConnectionRecord, threading.Thread | None]
        ] = {}
        self.affinity = settings.thread_affinity
        self.pid = os.getpid()
        REAPER.add(self)

    # These run on every checkout and return: keep them lean.

    def borrow(self) -> _ConnectionRecord:
        """Check an entry out of the pool, with a working driver connection.

        :raises sqlalchemy.exc.TimeoutError: when none is free within ``pool_timeout``.
        :raises PoolClosed: when the engine was disposed.
        """
        if ORPHANS:
            return_orphans()
        if self.life.retired:
            raise self._closed()
        began = time.monotonic()
        return self._lend(self._checkout(self.engine.pool, began), began)

    def reclaim(self, key: object) -> _ConnectionRecord | None:
        """Take back the entry parked under ``key``, checked; None if it cannot be.

        None when another borrower took it, or when it was replaced or failed its
        check: it goes back to the pool then, and the caller borrows as usual.
        """
        if ORPHANS:
            return_orphans()
        record = self.parked.take_back(key)
        if record is None:
            return None
        if self.life.retired or self.pid != os.getpid():
            # Disposed of, or forked without os.register_at_fork's hooks: never
            # reconnect in a retired pool, never touch a parent's socket.
            if self.pid != os.getpid():
                INHERITED.append(record)
                return None
            self._close_retired(record)
            return None
        dbapi_connection = record.dbapi_connection
        try:
            # Recycled or invalidated while parked: get_connection() replaced it,
            # and the new connection needs the setup of any new one.
            if record.get_connection() is not dbapi_connection:
                self._hand_over(record)
                return None
            self.check_out(dbapi_connection, record)
        except exc.DisconnectionError as error:
            record.invalidate(error)
            if error.invalidate_pool:
                self._invalidate_older(record)
            self._hand_over(record)
            return None
        except BaseException as error:
            sqla.checkin_failed(record, error)
            raise
        record.info[INFO_BORROWED_AT] = time.monotonic()
        self.counters.checked_out(0.0)
        if self.leak_threshold is not None:
            self.watch(record, skip=1)
        if signals.logger.isEnabledFor(logging.DEBUG):
            signals.logger.debug("took back a parked connection of %r", self.alias)
        return record

    def give_back(self, record: _ConnectionRecord, park: object = None) -> bool:
        """Reset a borrowed entry and check it back in (closed, if it cannot be reset).

        With a ``park`` key, and nobody waiting, the entry is parked under it instead:
        idle, but kept for :meth:`reclaim`. Return whether it was parked.
        """
        if refuse_foreign(record):
            return False
        try:
            self.check_in(record.dbapi_connection, record)
        except BaseException as error:
            try:
                record.invalidate(
                    Invalidation(f"resetting it failed ({type(error).__name__})")
                )
            finally:
                self._hand_over(record)
            if not isinstance(error, Exception):
                raise  # interrupted: the connection is closed, not pooled
            return False
        if signals.logger.isEnabledFor(logging.DEBUG):
            signals.logger.debug("checked in a connection of %r", self.alias)
        if (
            park is not None
            and not self.line
            and record.dbapi_connection is not None  # not closed by check_in()
            and INFO_NEW not in record.info  # not reset fully: Django sets it up
        ):
            parked = self.parked
            idle, most = sqla.queue_sizes(self.engine.pool)
            # At most pool_size idle connections, parked or queued: one more goes
            # through the pool, which closes it, as it closes overflow connections.
            if idle + len(parked) < most:
                parked.park(park, record)
                # A borrower that joined the line meanwhile may have looked already,
                # and a dispose may have closed the parked ones already.
                if not (self.line or self.life.retired):
                    return True
                if parked.take_back(park) is None:
                    return True  # taken meanwhile: the taker has it
                if self.life.retired:
                    self._close_retired(record)
                    return False
        self._hand_over(record)
        return False

    def lent(self, loan: object, record: _ConnectionRecord, shared: bool) -> None:
        """Note that the current thread borrowed ``record`` for ``loan``.

        If the thread ends without returning it, the reaper returns it. Whoever pops
        ``borrowed[loan]`` returns the connection: the owner's close, the loan's
        finalizer or the reaper, never two of them.
        """
        self.borrowed[loan] = (record, None if shared else threading.current_thread())
        if REAPER.pid != self.pid:  # the first loan of this process
            REAPER.start(self.pid)

    # -- SQLAlchemy code's checkouts and returns (through LendingPool) ---------------

    def checkout_for_sqlalchemy(self, pool: Any) -> ConnectionPoolEntry:
        """An entry for SQLAlchemy code: idle, parked, new, or waited for in line."""
        if ORPHANS:
            return_orphans()
        return self._checkout(pool, time.monotonic())

    def checkin_from_sqlalchemy(self, pool: Any, record: ConnectionPoolEntry) -> bool:
        """Hand an entry SQLAlchemy code returned to a waiter, or close it; False to queue it."""
        if refuse_foreign(record):
            return True  # a parent's, dropped in a forked child
        # SQLAlchemy code's returns, too, go to the first waiter in line at once.
        # Without waiting for the line's lock: the garbage collector may return a
        # connection here in a thread that holds it. If it is busy, the first in line
        # finds the connection in the pool at its next look.
        if self.line and self.line.hand_to_first(
            cast("_ConnectionRecord", record), blocking=False
        ):
            return True
        if self.parked and sqla.overflow(pool) > 0:
            idle, most = sqla.queue_sizes(pool)
            if idle + len(self.parked) >= most:
                # pool_size connections are idle already, some of them parked: close
                # this overflow one, as QueuePool does when its queue is full.
                try:
                    record.close()
                finally:
                    sqla.shrink(pool)
                return True
        return False

    # -- taking a connection, or waiting for one -----------------------------------

    def _checkout(self, pool: Any, began: float) -> _ConnectionRecord:
        # Nobody in line: take an idle connection, or open one under capacity.
        record = None if self.line else self._take(pool)
        if record is None:
            try:
                record = self._wait_in_line(pool, began)
            except exc.TimeoutError:
                self._exhausted()
                raise
        return record

    def _take(self, pool: Any) -> _ConnectionRecord | None:
        """An idle entry of the pool, or a new one under capacity; None at capacity."""
        record = sqla.take_idle(pool)
        if record is not None:
            return record
        if self.parked:
            # A parked connection is idle too: take it rather than open another.
            record = self.parked.steal_oldest()
            if record is not None:
                return record
        if sqla.try_grow(pool):
            return sqla.create(pool)
        return None

    def _wait_in_line(self, pool: Any, began: float) -> _ConnectionRecord:
        line = self.line
        ticket = line.join(began)
        try:
            taken = line.wait(
                ticket,
                began + sqla.wait_timeout(pool),
                take=lambda: self._take_first(pool),
                tidy=self._tidy,
                closed=lambda: self.life.retired,
            )
        except LineTimeout:
            raise sqla.timeout_error(pool) from None
        except LineClosed:
            # Handed over by a pool being disposed of (closed, most likely): lending
            # it would open a connection to a database about to be dropped.
            handed = line.leave(ticket)
            if handed is not None:
                self._close_retired(cast("_ConnectionRecord", handed))
            raise self._closed() from None
        except BaseException:
            handed = line.leave(ticket)
            if handed is not None:  # handed over as this thread gave up
                self._hand_over(cast("_ConnectionRecord", handed))
            raise
        if taken is _SLOT:
            return sqla.create(pool)
        return cast("_ConnectionRecord", taken)

    def _take_first(self, pool: Any) -> _ConnectionRecord | _Slot | None:
        # The first in line, under the line's lock: what reached the pool unannounced.
        record = sqla.take_idle(pool)
        if record is None and self.parked:
            record = self.parked.steal_oldest()
        if record is not None:
            return record
        if sqla.try_grow(pool):
            return _SLOT
        return None

    def _tidy(self, first: bool) -> None:
        # Before giving up, take back what borrowers left: orphans, and the
        # connections of threads that ended (the first in line looks).
        if ORPHANS:
            return_orphans()
        if first and self.borrowed:
            self.reap()

    def _hand_over(self, record: _ConnectionRecord) -> None:
        """Give a returned entry to the first waiter in line, or back to the pool."""
        if not (self.line and self.line.hand_to_first(record)):
            sqla.checkin(record)

    # -- lending ---------------------------------------------------------------------

    def _lend(self, record: _ConnectionRecord, began: float) -> _ConnectionRecord:
        try:
            # As SQLAlchemy's checkout: a connection that fails its check is
            # replaced (with every older one) and the new one checked once more.
            for _ in range(2):
                dbapi_connection = record.get_connection()
                try:
                    self.check_out(dbapi_connection, record)
                except exc.DisconnectionError as error:
                    record.invalidate(error)
                    if error.invalidate_pool:
                        self._invalidate_older(record)
                else:
                    break
            else:
                raise exc.InvalidRequestError("new connections failed their checks")
            now = time.monotonic()
            record.info[INFO_BORROWED_AT] = now
            waited = now - began
            self.counters.checked_out(waited)
            if self.slow_checkout is not None and waited > self.slow_checkout:
                self._slow(waited)
            if self.leak_threshold is not None:
                self.watch(record, skip=3)
        except BaseException as error:
            sqla.checkin_failed(record, error)
            raise
        if signals.logger.isEnabledFor(logging.DEBUG):
            signals.logger.debug("checked out a connection of %r", self.alias)
        return record

    def borrow_idle(self, timeout: float) -> _ConnectionRecord | None:
        """Check out an idle entry ready to use now, without waiting; None if none is.

        For health probes, which must not wait past their own deadline, add or
        reconnect a connection, nor close a healthy one for want of time. Those
        waiting in line come first. An entry due for recycling or replacement, or
        whose reset has not finished within ``timeout`` seconds, is left for the next
        checkout. There is no ping: the probe's own query checks the server.

        :raises PoolClosed: when the engine was disposed.
        """
        if self.life.retired:
            raise self._closed()
        if self.line:
            return None
        pool = self.engine.pool
        record = sqla.take_idle(pool)
        if record is None and self.parked:
            record = self.parked.steal_oldest()
        if record is None:
            return None
        dbapi_connection = record.dbapi_connection
        if dbapi_connection is None or sqla.due_for_replacement(pool, record):
            self._hand_over(record)
            return None
        try:
            done = self.hooks.complete_reset(dbapi_connection, timeout)
        except BaseException as error:
            sqla.checkin_failed(record, error)
            raise
        if done is None:  # still on its way: the next checkout reads it
            self._hand_over(record)
            return None
        if not done:
            self.discard(record, "its reset failed")
            return None
        record.info.pop(INFO_FRESH, None)
        record.info[INFO_BORROWED_AT] = time.monotonic()
        self.counters.checked_out(0.0)
        if self.leak_threshold is not None:
            self.watch(record, skip=1)
        return record

    # -- closing ---------------------------------------------------------------------

    def unpark(self, key: object) -> None:
        """Check the entry parked under ``key`` into the pool, if nobody took it."""
        record = self.parked.take_back(key)
        if record is not None and not refuse_foreign(record):
            self._hand_over(record)

    def discard(
        self, record: _ConnectionRecord, reason: str, older_too: bool = False
    ) -> None:
        """Close a borrowed entry's connection, and with ``older_too`` every older one."""
        if refuse_foreign(record):
            return
        try:
            if older_too:
                self._invalidate_older(record)
            record.invalidate(Invalidation(reason))
        finally:
            self._hand_over(record)

    def close_parked(self) -> None:
        """Close this process's parked connections: their pool is being disposed of.

        Parked entries are checked out as far as the pool knows, so its dispose()
        would not close them. Their owners find them gone and borrow anew.
        """
        if self.pid != os.getpid():
            return
        parked = self.parked
        while parked:
            record = parked.steal_oldest()
            if record is None:
                return
            self._close_retired(record)

    def _close_retired(self, record: _ConnectionRecord) -> None:
        """Close an entry of a disposed pool, and give its place back."""
        if refuse_foreign(record):
            return
        try:
            record.invalidate(Invalidation("its pool was disposed of", quiet=True))
        finally:
            self._hand_over(record)

    def _invalidate_older(self, record: _ConnectionRecord) -> None:
        if sqla.invalidate_older(self.engine.pool, record):
            signals.logger.warning(
                "replacing every connection of %r opened before now", self.alias
            )

    # -- what borrowers left behind ----------------------------------------------------

    def reap(self) -> None:
        """Return the connections of Django's borrowers whose thread has ended."""
        borrowed = self.borrowed
        # A copy first: dict.copy() allocates nothing per entry, so no collection
        # (whose finalizers pop from the dict) runs in the middle of it.
        for loan, (_, thread) in borrowed.copy().items():
            if thread is None or _alive(thread):
                continue
            entry = borrowed.pop(loan, None)
            if entry is not None:  # not returned meanwhile: the reaper returns it
                self._return_abandoned(
                    entry[0],
                    getattr(loan, "error", None),
                    f"thread {thread.name!r} ended without closing it",
                )

    def return_orphan(
        self,
        record: _ConnectionRecord,
        error: str | None,
        thread: threading.Thread | None,
    ) -> None:
        """Return (or discard) an entry whose Django connection object was collected."""
        if error == PARKED:
            if self.life.retired:
                self._close_retired(record)
            else:
                self._hand_over(record)
            return
        self._return_abandoned(
            record,
            error,
            "its Django connection object was collected"
            + ("" if thread is None else f" (borrowed by thread {thread.name!r})"),
        )

    def _return_abandoned(
        self, record: _ConnectionRecord, error: str | None, why: str
    ) -> None:
        """Return (or, after an error, discard) a connection its borrower left."""
        held = record.info.get(INFO_HELD)
        logger.warning(
            "a connection of %r was still borrowed when %s; returning it%s",
            self.alias,
            why,
            ""
            if held is None
            else f". It was borrowed at:\n{''.join(held.stack.format()).rstrip()}",
        )
        if error is None:
            self.give_back(record)
        else:
            self.discard(record, "its borrower saw it fail", older_too=True)

    def forget_fork_state(self) -> None:
        """In a forked child: drop the parent's waiters, locks and counts."""
        self.line = WaitLine()
        # The parent's sockets: keep them referenced, never use or close them.
        INHERITED.extend(self.parked.forget())
        INHERITED.extend(record for record, _ in self.borrowed.copy().values())
        self.borrowed = {}
        self.pid = os.getpid()
        self.counters.reset()

    # -- counters, signals and leak watch ----------------------------------------------

    def _exhausted(self) -> None:
        self.counters.add("checkout_timeouts")
        signals.send(
            signals.pool_exhausted,
            alias=self.alias,
            timeout=self.settings.pool_timeout,
            stats=self.stats(),
        )

    def _slow(self, waited: float) -> None:
        stats = self.stats()
        signals.logger.warning(
            "a checkout of %r waited %.1f ms (slow_checkout_ms=%g): %d of %d "
            "connections checked out, %d threads waiting",
            self.alias,
            waited * 1000,
            self.settings.slow_checkout_ms,
            stats.checked_out,
            stats.capacity,
            stats.waiting,
        )

    def stats(self) -> PoolStats:
        """A snapshot of this pool: see :class:`~django_poolconf.stats.PoolStats`."""
        settings = self.settings
        return stats.snapshot(
            self.alias,
            "primary" if settings.replica_of is None else "replica",
            self.engine.pool,  # type: ignore[arg-type]
            settings.capacity,
            self.counters,
            in_line=len(self.line),
        )


def _alive(thread: threading.Thread) -> bool:
    try:
        return thread.is_alive()
    except Exception:  # pragma: no cover - a dummy thread stopped by a fork
        return True  # not a thread threading started and can tell about: keep it
