"""The lender: lends a pool's connections to Django and checks them on the way out and in.

Django's wrapper checks the pool's records out directly (:meth:`Lender.borrow`,
:meth:`Lender.checkin`), without the proxy object, weak reference and event
dispatches SQLAlchemy adds to every checkout; SQLAlchemy code checks out through
``engine.connect()``, and the pool (:class:`~django_poolconf.pool.sqla.LendingPool`)
and its listeners call the same lender. The pool's state, which both kinds of
borrower share (idle, waiting and parked records, counters), is the lender's
:class:`~django_poolconf.pool.state.PoolState`, under its one lock; the lender does
what must happen outside that lock: opening, checking, resetting and closing
connections, signals and logs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, cast

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
from django_poolconf.pool.policy import CheckPolicy
from django_poolconf.pool.state import OPEN, Life, Outcome, PoolState
from django_poolconf.pool.state import PARKED as PARKED_NOW
from django_poolconf.pool.waitline import LineClosed, LineTimeout, WaitLine
from django_poolconf.signals import Invalidation
from django_poolconf.stats import PoolStats

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool.base import _ConnectionRecord

__all__ = ["Lender"]

# The logger these messages always went to (documented), from before the pool package.
logger = logging.getLogger("django_poolconf.engines")


class Lender(CheckPolicy):
    """Lends an engine's pooled connections, and checks them on the way out and in.

    SQLAlchemy code borrows through ``engine.connect()``, and the pool's listeners
    call :meth:`check_out` and :meth:`check_in`. Django's wrapper borrows the pool's
    entries directly with :meth:`borrow` and :meth:`checkin`: the same checks,
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
        "pid",
        "state",
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
        # The pool's idle, waiting and parked records and its counters, under one lock.
        self.state: PoolState[_ConnectionRecord] = PoolState(
            settings.pool_size,
            settings.max_overflow,
            life,
            self.counters,
            settings.max_waiting,
        )
        # Django's loans, with the thread that borrowed (None for a connection object
        # shared between threads): whoever pops a loan's entry, its owner closing it,
        # its finalizer or the reaper (its thread ended), returns the connection.
        self.borrowed: dict[
            object, tuple[_ConnectionRecord, threading.Thread | None]
        ] = {}
        self.affinity = settings.thread_affinity
        self.pid = os.getpid()
        REAPER.add(self)

    @property
    def line(self) -> WaitLine[Any]:
        """The checkouts waiting for a connection, Django's and SQLAlchemy code's."""
        return self.state.line

    @property
    def parked(self) -> ParkingLot[object, _ConnectionRecord]:
        """Connections kept by the Django connection object that returned them, by its loan."""
        return self.state.parked

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
        return self._lend(self._checkout(began), began)

    def take_back(self, key: object) -> _ConnectionRecord | None:
        """Take back the entry parked under ``key``, checked; None if it cannot be.

        None when another borrower took it, or when it was replaced or failed its
        check: it goes back to the pool then, and the caller borrows as usual.
        """
        if ORPHANS:
            return_orphans()
        # Without the state's lock: whoever pops the parked entry has it.
        record = self.state.parked.take_back(key)
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

    def checkin(self, record: _ConnectionRecord, park: object = None) -> bool:
        """Reset a borrowed entry and check it back in (closed, if it cannot be reset).

        With a ``park`` key, and nobody waiting, the entry is parked under it instead:
        idle, but kept for :meth:`take_back`. Return whether it was parked.
        """
        if refuse_foreign(record):
            return False
        held = self.end_loan(record)
        try:
            self.reset_returned(record.dbapi_connection, record)
        except BaseException as error:
            if held is not None:
                self.counters.checked_in(held)
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
        if park is not None and (
            record.dbapi_connection is None  # closed by the reset
            or INFO_NEW in record.info  # reset fully: Django sets it up again
        ):
            park = None
        # One hold of the state's lock counts the return and hands the entry to the
        # first in line or parks it; else it goes through the pool.
        outcome = self.state.checkin_loan(record, park, held)
        if outcome is PARKED_NOW:
            return True
        if outcome is None:
            sqla.checkin(record)
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

    def checkout_for_sqlalchemy(self) -> ConnectionPoolEntry:
        """An entry for SQLAlchemy code: idle, parked, new, or waited for in line.

        :raises PoolClosed: when the engine was disposed, before anything is opened.
        """
        if ORPHANS:
            return_orphans()
        if self.life.retired:
            # As borrow(): a stale engine must not open a connection to a database
            # that may be about to be dropped (the checkout listener would refuse
            # it only once opened).
            raise self._closed()
        return self._checkout(time.monotonic())

    def return_record(self, record: ConnectionPoolEntry) -> None:
        """Take in an entry checked in through the pool: hand it over, keep it idle, or close it.

        SQLAlchemy code's returns come here, and Django's that were neither handed
        over nor parked. Closed when ``pool_size`` entries are idle already (an
        overflow connection), or the pool was disposed of.
        """
        if refuse_foreign(record):
            return  # a parent's, dropped in a forked child
        state = self.state
        if not state.checkin(cast("_ConnectionRecord", record)):
            try:
                record.close()
            finally:
                state.closed()

    # -- taking a connection, or waiting for one -----------------------------------

    def _checkout(self, began: float) -> _ConnectionRecord:
        # Nobody in line: take an idle connection, or room to open one.
        taken = self.state.checkout()
        if taken is None:
            try:
                taken = self._wait_in_line(began)
            except exc.TimeoutError:
                self._exhausted()
                raise
        if taken is OPEN:
            try:
                return sqla.create(self.engine.pool)
            except BaseException:
                self.state.closed()
                raise
        return cast("_ConnectionRecord", taken)

    def _wait_in_line(self, began: float) -> _ConnectionRecord | Outcome:
        state = self.state
        ticket = state.join(began)
        if ticket is None:
            raise self._refused()
        try:
            return state.wait(ticket, began + self.settings.pool_timeout, self._tidy)
        except LineTimeout:
            raise self._timeout_error() from None
        except LineClosed:
            # Handed over by a pool being disposed of (closed, most likely): lending
            # it would open a connection to a database about to be dropped.
            handed = state.line.leave(ticket)
            if handed is not None:
                self._close_retired(cast("_ConnectionRecord", handed))
            raise self._closed() from None
        except BaseException:
            handed = state.line.leave(ticket)
            if handed is not None:  # handed over as this thread gave up
                self._hand_over(cast("_ConnectionRecord", handed))
            raise

    def _tidy(self, first: bool) -> None:
        # Before giving up, take back what borrowers left: orphans, and the
        # connections of threads that ended (the first in line looks).
        if ORPHANS:
            return_orphans()
        if first and self.borrowed:
            self.reap()

    def _hand_over(self, record: _ConnectionRecord) -> None:
        """Give a returned entry to the first waiter in line, or back to the pool."""
        if not self.state.hand_to_first(record):
            sqla.checkin(record)

    def _timeout_error(self) -> exc.TimeoutError:
        # SQLAlchemy's QueuePool's words, which code written for it may look for.
        settings = self.settings
        return exc.TimeoutError(
            f"QueuePool limit of size {settings.pool_size} overflow "
            f"{settings.max_overflow} reached, connection timed out, timeout "
            f"{settings.pool_timeout:.2f}"
        )

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
        record = self.state.take_idle()
        if record is None:
            return None
        pool = self.engine.pool
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

    def checkin_parked(self, key: object) -> None:
        """Check the entry parked under ``key`` into the pool, if nobody took it."""
        record = self.state.parked.take_back(key)
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

    def close_idle(self) -> int:
        """Close this process's idle and parked connections (disposed of, or drained); return how many.

        The owners of parked ones find them gone and borrow anew.
        """
        if self.pid != os.getpid():
            return 0
        records = self.state.take_all()
        try:
            for record in records:
                record.close()
        finally:
            self.state.closed(len(records))
        return len(records)

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
            self.checkin(record)
        else:
            self.discard(record, "its borrower saw it fail", older_too=True)

    def forget_fork_state(self) -> None:
        """In a forked child: drop the parent's waiters, locks and counts."""
        # The parent's sockets: keep them referenced, never use or close them.
        INHERITED.extend(self.state.forget_fork_state())
        INHERITED.extend(record for record, _ in self.borrowed.copy().values())
        self.borrowed = {}
        self.pid = os.getpid()

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
        state = self.state
        with state.lock:  # the numbers and the counters of one instant
            pool_size, checked_in, checked_out, overflow, waiting = state.numbers()
            return stats.snapshot(
                self.alias,
                "primary" if settings.replica_of is None else "replica",
                self.counters,
                pool_size=pool_size,
                checked_in=checked_in,
                checked_out=checked_out,
                overflow=overflow,
                capacity=settings.capacity,
                waiting=waiting,
            )


def _alive(thread: threading.Thread) -> bool:
    try:
        return thread.is_alive()
    except Exception:  # pragma: no cover - a dummy thread stopped by a fork
        return True  # not a thread threading started and can tell about: keep it
