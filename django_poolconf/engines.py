"""The engine registry: one SQLAlchemy :class:`~sqlalchemy.engine.Engine` per alias per process.

Django's connection for an alias and every :func:`get_engine` user share the engine's
pool, so a process never opens more than ``pool_size + max_overflow`` connections per
alias. Engines are built lazily, from Django's own connection parameters, by the
alias's backend; this module only keeps them, keeps them apart across ``fork()`` and
disposes of them.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import sqlalchemy
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS
from sqlalchemy import event, exc
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState, QueuePool
from sqlalchemy.util import queue as sqla_queue

from django_poolconf import compat, monitoring, process
from django_poolconf.conf.pool import PoolSettings
from django_poolconf.errors import PoolClosed
from django_poolconf.monitoring import Counters, Held, Invalidation, PoolStats

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool.base import _ConnectionRecord

__all__ = [
    "ConnectionHooks",
    "Lender",
    "dispose",
    "dispose_all",
    "get_async_engine",
    "get_engine",
    "lender_for",
]

logger = logging.getLogger(__name__)

#: Keys this package keeps in a pooled connection's ``info`` dict.
INFO_NEW: Final = "django_poolconf.new"  # Django has not initialized it yet
INFO_RETURNED_AT: Final = "django_poolconf.returned_at"  # monotonic seconds
INFO_FRESH: Final = "django_poolconf.fresh"  # opened, not yet checked out
INFO_BORROWED_AT: Final = "django_poolconf.borrowed_at"  # monotonic seconds
INFO_HELD: Final = "django_poolconf.held"  # leak detection's record of the borrower
INFO_INVALIDATED: Final = "django_poolconf.invalidated"  # closing as unusable
INFO_PID: Final = "django_poolconf.pid"  # the process that opened it: its owner

#: Recycling takes up to this fraction off ``pool_recycle``, so that connections
#: opened together are not all replaced together (psycopg_pool takes up to 5 %).
RECYCLE_JITTER: Final = 0.05

#: How often the reaper looks for connections borrowed by threads that have ended.
REAP_INTERVAL_S: Final = 1.0


class ConnectionHooks(Protocol):
    """What a vendor backend tells the registry about its driver connections."""

    dialect_url: str

    def connect(self) -> Any:
        """Open a new driver connection."""

    def closed_while_idle(self, dbapi_connection: Any) -> bool:
        """Whether the server visibly closed an idle connection: a local check, no round trip."""

    def ping(self, dbapi_connection: Any, timeout: float) -> bool:
        """Whether the server answers within ``timeout`` seconds."""

    def for_sqlalchemy(self, dbapi_connection: Any) -> None:
        """Prepare a connection checked out by SQLAlchemy code, not by Django."""

    def reset(self, dbapi_connection: Any, policy: str) -> bool:
        """Make a returned connection clean; return whether Django must set it up again.

        The reset may be sent without waiting for it: :meth:`complete_reset` collects
        it at the next checkout. Raise to have the connection closed instead of pooled.
        """

    def complete_reset(self, dbapi_connection: Any, timeout: float) -> bool | None:
        """Collect a reset sent on return, within ``timeout`` seconds.

        True when it is done (at once when none is outstanding), False when it failed,
        None when it did not finish in time: it stays outstanding.
        """

    async def async_connect(self) -> Any:
        """Open a new asyncio driver connection, for :func:`get_async_engine`."""


@dataclass
class _Registered:
    lender: Lender
    engine: Engine
    fingerprint: Hashable
    settings: PoolSettings
    hooks: ConnectionHooks
    pid: int
    life: _Life
    async_engine: AsyncEngine | None = None


_lock = threading.Lock()
_registry: dict[str, _Registered] = {}

#: Connections a forked child inherited checked out: kept, never used or closed.
INHERITED: list[object] = []


def _refuse_foreign(record: ConnectionPoolEntry) -> bool:
    """Whether another process opened ``record``: then keep it referenced, untouched.

    Ownership is stamped when a connection is opened (the ``connect`` listener), never
    when it is returned, so this holds whichever thread, finalizer or garbage
    collection in a forked child hands a parent's connection back. A parent's socket
    must see nothing from the child: no reset, no close, no other borrower.

    A record with no stamp holds no connection: SQLAlchemy clears ``info`` before it
    reconnects, and a failed reconnect leaves it so. It is nobody's to keep: its place
    in the pool goes back.
    """
    owner = record.info.get(INFO_PID)
    if owner is None or owner == os.getpid():
        return False
    INHERITED.append(record)
    return True


def get_engine(alias: str = DEFAULT_DB_ALIAS) -> Engine:
    """Return the SQLAlchemy engine whose pool Django's connection for ``alias`` uses.

    Use it for SQLAlchemy Core or ORM work that should share Django's connection
    budget: ``with get_engine().begin() as conn: ...``. Do not call ``dispose()`` on
    it; use :func:`dispose_all`.

    :raises ImproperlyConfigured: if ``alias`` is not in ``DATABASES`` or does not use
        a django-poolconf backend.
    """
    engine: Engine = _pooled_wrapper(alias).pooled_engine()
    return engine


def get_async_engine(alias: str = DEFAULT_DB_ALIAS) -> AsyncEngine:
    """Return a SQLAlchemy :class:`~sqlalchemy.ext.asyncio.AsyncEngine` for ``alias``.

    It is built once per process from the same validated pool options and connection
    parameters as :func:`get_engine`, on psycopg's async driver. An async driver
    connection cannot serve Django's synchronous ORM, so this engine has a pool of its
    own: count its capacity in the alias's connection budget.

    :raises ImproperlyConfigured: as :func:`get_engine` does.
    """
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = get_engine(alias)
    with _lock:
        entry = _registry[alias]
        if entry.engine is not engine:  # pragma: no cover - a concurrent rebuild
            raise ImproperlyConfigured(f"The pool of {alias!r} was rebuilt; try again.")
        created = entry.async_engine is None
        if entry.async_engine is None:
            settings = entry.settings
            entry.async_engine = create_async_engine(
                "postgresql+psycopg://",
                async_creator=entry.hooks.async_connect,
                pool_size=settings.pool_size,
                max_overflow=settings.max_overflow,
                pool_timeout=settings.pool_timeout,
                pool_recycle=-1
                if settings.pool_recycle is None
                else settings.pool_recycle,
                pool_pre_ping=settings.pool_pre_ping,
                pool_use_lifo=True,
                hide_parameters=True,
            )
        async_engine = entry.async_engine
    if created:  # logged outside the lock: a log handler may call back in
        logger.info(
            "created async pool for %r (pool_size=%d, max_overflow=%d)",
            alias,
            entry.settings.pool_size,
            entry.settings.max_overflow,
        )
    return async_engine


def _pooled_wrapper(alias: str) -> Any:
    from django.db import connections
    from django.utils.connection import ConnectionDoesNotExist

    try:
        wrapper = connections[alias]
    except ConnectionDoesNotExist:
        raise ImproperlyConfigured(f"DATABASES has no alias {alias!r}.") from None
    if not hasattr(wrapper, "pooled_engine"):
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]['ENGINE'] is {wrapper.settings_dict['ENGINE']!r}, "
            "not a django-poolconf backend. Set it to "
            "'django_poolconf.backends.postgresql'."
        )
    return wrapper


def lender_for(
    alias: str,
    fingerprint: Hashable,
    settings: PoolSettings,
    hooks_factory: Callable[[], ConnectionHooks],
) -> Lender:
    """Return the lender of the alias's engine, building the engine when missing or when its parameters changed.

    Backends call this on every connect; the fast path is one dict lookup and one
    comparison. A changed ``fingerprint`` (as when the test runner renames the
    database) disposes of the old engine and builds a new one.
    """
    entry = _registry.get(alias)
    # Comparing with os.getpid() here, not only in the fork hook, also catches a
    # fork that bypassed Python's hooks; it costs one system call per checkout.
    if (
        entry is not None
        # The same object, in the steady state: no element-wise comparison.
        and (entry.fingerprint is fingerprint or entry.fingerprint == fingerprint)
        and entry.pid == os.getpid()
    ):
        return entry.lender
    replaced = None
    with _lock:
        entry = _registry.get(alias)
        if entry is not None and entry.pid != os.getpid():
            # A fork that os.register_at_fork did not see (e.g. a C extension's).
            _abandon_inherited(entry)
        if entry is not None and entry.fingerprint == fingerprint:
            return entry.lender
        replaced = entry
        hooks = hooks_factory()
        life = _Life()
        lender = _build_engine(alias, settings, hooks, life)
        _registry[alias] = _Registered(
            lender, lender.engine, fingerprint, settings, hooks, os.getpid(), life
        )
    # Outside the lock: closing connections sends signals and logs, and a receiver
    # or a log handler may call back into the registry.
    if replaced is not None:
        logger.info("connection parameters of %r changed; replacing its pool", alias)
        _dispose_entry(alias, replaced)
    logger.info(
        "created pool for %r (pool_size=%d, max_overflow=%d)",
        alias,
        settings.pool_size,
        settings.max_overflow,
    )
    return lender


def dispose(alias: str) -> None:
    """Close the idle connections of ``alias``'s pool and forget the engine.

    Connections still checked out are closed when they are returned. The next connect
    builds a fresh engine. Call it before a database is dropped or used as a template.
    """
    with _lock:
        entry = _registry.pop(alias, None)
    # Closed outside the lock: closing sends signals and logs, and their receivers
    # and handlers may call back into the registry (pool_stats(), get_engine()).
    if entry is not None:
        _dispose_entry(alias, entry)


def dispose_all() -> None:
    """Dispose of every pool of this process, as at interpreter exit."""
    with _lock:
        entries = list(_registry.items())
        _registry.clear()
    for alias, entry in entries:  # outside the lock, as in dispose()
        _dispose_entry(alias, entry)


def _dispose_entry(alias: str, entry: _Registered) -> None:
    if entry.pid != os.getpid():
        _abandon_inherited(entry)
        return
    # Retire the engine: connections still checked out are closed when returned,
    # and the engine itself refuses new checkouts (PoolClosed).
    entry.life.retired = True
    entry.engine.dispose()  # closes parked connections too (LendingPool.dispose)
    # What borrowers left for a checkout or the reaper to return: orphans, and
    # connections of ended threads. Returned to a retired pool, they are closed now,
    # not a second later, when the database may be being dropped.
    if ORPHANS:
        _return_orphans()
    entry.lender.reap()
    if entry.async_engine is not None:
        _dispose_async(entry.async_engine)
    logger.info("disposed pool for %r", alias)


def _close_parked(lender: Lender) -> None:
    # Parked entries are checked out as far as the pool knows, so its dispose()
    # would not close them. Their owners find them gone and borrow anew.
    parked = lender.parked
    while parked:
        record = _take_parked(parked)
        if record is None:
            return
        lender._close_retired(record)


def _dispose_async(engine: AsyncEngine) -> None:
    """Close an async pool's idle connections from synchronous code."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: run one for the closing
        asyncio.run(engine.dispose())
    else:
        # Inside a running loop, nothing here may wait: drop the connections and
        # let the garbage collector close them.
        engine.sync_engine.dispose(close=False)


def _build_engine(
    alias: str, settings: PoolSettings, hooks: ConnectionHooks, life: _Life
) -> Lender:
    engine = sqlalchemy.create_engine(
        hooks.dialect_url,
        creator=hooks.connect,
        poolclass=LendingPool,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_recycle=-1 if settings.pool_recycle is None else settings.pool_recycle,
        # The checkout listener below pings only when it must; SQLAlchemy's own
        # pre-ping costs a round trip on every checkout and has no deadline.
        pool_pre_ping=False,
        # The reset listener below decides how much reset a connection needs.
        pool_reset_on_return=None,
        # Reusing the most recently returned connection keeps the rest idle long
        # enough to be recycled, and keeps the hot one inside the no-ping window.
        pool_use_lifo=True,
        use_native_hstore=False,
        hide_parameters=True,
    )
    compat.check_internals(engine)  # once per process: what the pool relies on
    lender = Lender(engine, settings, hooks, life)
    engine.pool.lender = lender  # type: ignore[attr-defined]
    _listen(lender)
    return lender


class LendingPool(QueuePool):
    """SQLAlchemy's ``QueuePool``, with the Lender's parked connections counted as idle.

    Connections parked with a Django connection object between requests (see
    ``thread_affinity``) are checked out as far as ``QueuePool`` knows, but idle
    and free to take: SQLAlchemy code's checkouts take one when no other is idle
    before opening a connection or waiting, and wait in the Lender's line, first
    come, first served, as Django's do. ``checkedin()``, ``checkedout()`` and
    ``status()`` count parked connections as idle.
    """

    lender: Lender | None = None

    def recreate(self) -> LendingPool:
        # Engine.dispose() replaces the pool with this one: it lends the same way.
        pool = cast("LendingPool", super().recreate())
        pool.lender = self.lender
        return pool

    def dispose(self) -> None:
        # Parked connections are checked out as far as QueuePool knows: close them
        # too, or they would outlive this pool.
        super().dispose()
        lender = self.lender
        if lender is not None and lender.pid == os.getpid():
            _close_parked(lender)

    def _do_get(self) -> ConnectionPoolEntry:
        lender = self.lender
        if lender is None:
            return super()._do_get()
        if ORPHANS:
            _return_orphans()
        record = None if lender.line else _take(self, lender.parked)
        if record is None:
            try:
                record = lender._wait_in_line(self, time.monotonic())
            except exc.TimeoutError:
                lender._exhausted()
                raise
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        if _refuse_foreign(record):
            return  # a parent's, dropped in a forked child
        lender = self.lender
        # SQLAlchemy code's returns, too, go to the first waiter in line at once.
        # Without waiting for the line's lock: the garbage collector may return a
        # connection here in a thread that holds it. If it is busy, the first in line
        # finds the connection in the pool at its next look, within 50 ms.
        if (
            lender is not None
            and lender.line
            and lender._give_to_first(record, blocking=False)
        ):
            return
        if (
            lender is not None
            and lender.parked
            and self._overflow > 0
            and len(self._pool.queue) + len(lender.parked) >= self._pool.maxsize  # type: ignore[attr-defined]
        ):
            # pool_size connections are idle already, some of them parked: close
            # this overflow one, as QueuePool does when its queue is full.
            try:
                record.close()
            finally:
                self._dec_overflow()
            return
        super()._do_return_conn(record)

    def checkedin(self) -> int:
        lender = self.lender
        return super().checkedin() + (0 if lender is None else len(lender.parked))

    def checkedout(self) -> int:
        lender = self.lender
        return super().checkedout() - (0 if lender is None else len(lender.parked))


class _Life:
    """Whether an engine was retired by a dispose: read on every checkout and return."""

    __slots__ = ("retired",)

    def __init__(self) -> None:
        self.retired = False


class Lender:
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
        "alias",
        "borrowed",
        "counters",
        "engine",
        "hooks",
        "leak_threshold",
        "life",
        "line",
        "line_lock",
        "parked",
        "pid",
        "policy",
        "pre_ping",
        "settings",
        "slow_checkout",
        "threshold",
        "validation_timeout",
    )

    def __init__(
        self,
        engine: Engine,
        settings: PoolSettings,
        hooks: ConnectionHooks,
        life: _Life,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.alias = settings.alias
        self.hooks = hooks
        self.life = life
        self.counters = Counters()
        self.line: deque[_Ticket] = deque()  # Django's waiters, oldest first
        self.line_lock = threading.Lock()
        # Connections kept by the Django connection object that returned them, by
        # its loan: idle, and taken by whoever needs one when no other is idle.
        # Owner and takers race through single dict operations, atomic in CPython.
        self.parked: dict[object, _ConnectionRecord] = {}
        # Django's loans, with the thread that borrowed (None for a connection object
        # shared between threads): whoever pops a loan's entry, its owner closing it,
        # its finalizer or the reaper (its thread ended), returns the connection.
        self.borrowed: dict[
            object, tuple[_ConnectionRecord, threading.Thread | None]
        ] = {}
        self.affinity = settings.thread_affinity
        self.pid = os.getpid()
        self.leak_threshold = settings.leak_detection_threshold
        self.slow_checkout = (
            None
            if settings.slow_checkout_ms is None
            else settings.slow_checkout_ms / 1000
        )
        self.policy = settings.reset_on_return
        self.pre_ping = settings.pool_pre_ping
        self.threshold = settings.pre_ping_threshold
        self.validation_timeout = settings.validation_timeout
        REAPER.add(self)

    # These run on every checkout and return: keep them lean.

    def borrow(self) -> _ConnectionRecord:
        """Check an entry out of the pool, with a working driver connection.

        :raises sqlalchemy.exc.TimeoutError: when none is free within ``pool_timeout``.
        :raises PoolClosed: when the engine was disposed.
        """
        if ORPHANS:
            _return_orphans()
        if self.life.retired:
            raise self._closed()
        pool = self.engine.pool
        began = time.monotonic()
        # Nobody in line: take an idle connection, or open one under capacity.
        record = None if self.line else _take(pool, self.parked)
        if record is None:
            try:
                record = self._wait_in_line(pool, began)
            except exc.TimeoutError:
                self._exhausted()
                raise
        return self._lend(record, began)

    def reclaim(self, key: object) -> _ConnectionRecord | None:
        """Take back the entry parked under ``key``, checked; None if it cannot be.

        None when another borrower took it, or when it was replaced or failed its
        check: it goes back to the pool then, and the caller borrows as usual.
        """
        if ORPHANS:
            _return_orphans()
        record = self.parked.pop(key, None)
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
                _invalidate_older(self.engine.pool, record, self.alias)
            self._hand_over(record)
            return None
        except BaseException as error:
            record._checkin_failed(error, _fairy_was_created=False)
            raise
        record.info[INFO_BORROWED_AT] = time.monotonic()
        self.counters.checked_out(0.0)
        if self.leak_threshold is not None:
            self._watch(record, skip=1)
        if monitoring.logger.isEnabledFor(logging.DEBUG):
            monitoring.logger.debug("took back a parked connection of %r", self.alias)
        return record

    def lent(self, loan: object, record: _ConnectionRecord, shared: bool) -> None:
        """Note that the current thread borrowed ``record`` for ``loan``.

        If the thread ends without returning it, the reaper returns it. Whoever pops
        ``borrowed[loan]`` returns the connection: the owner's close, the loan's
        finalizer or the reaper, never two of them.
        """
        self.borrowed[loan] = (record, None if shared else threading.current_thread())
        if REAPER.pid != self.pid:  # the first loan of this process
            REAPER.start(self.pid)

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

    def _lend(self, record: _ConnectionRecord, began: float) -> _ConnectionRecord:
        pool = self.engine.pool
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
                        _invalidate_older(pool, record, self.alias)
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
                self._watch(record, skip=3)
        except BaseException as error:
            record._checkin_failed(error, _fairy_was_created=False)
            raise
        if monitoring.logger.isEnabledFor(logging.DEBUG):
            monitoring.logger.debug("checked out a connection of %r", self.alias)
        return record

    def _closed(self) -> PoolClosed:
        return PoolClosed(
            f"This engine of {self.alias!r} was disposed (its connection "
            "parameters changed, or dispose_all() ran). Call get_engine() again."
        )

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
        record: _ConnectionRecord | None
        try:
            record = pool._pool.get(False)  # type: ignore[attr-defined]
        except sqla_queue.Empty:
            record = _take_parked(self.parked) if self.parked else None
        if record is None:
            return None
        dbapi_connection = record.dbapi_connection
        if dbapi_connection is None or _due_for_replacement(pool, record):
            self._hand_over(record)
            return None
        try:
            done = self.hooks.complete_reset(dbapi_connection, timeout)
        except BaseException as error:
            record._checkin_failed(error, _fairy_was_created=False)
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
            self._watch(record, skip=1)
        return record

    def _wait_in_line(self, pool: Any, began: float) -> _ConnectionRecord:
        # QueuePool alone is not fair: a connection returned to a waiting thread can
        # be taken by a thread that arrives meanwhile (often the one that returned
        # it, back for its next request), and the robbed waiter queues again at the
        # back, so under sustained load one can wait past pool_timeout while others
        # are served. Django's borrowers wait in line instead, first come, first
        # served: a returned connection is handed straight to the first in line
        # (see _hand_over), and a newcomer queues behind. The first also takes what
        # reaches the pool otherwise (SQLAlchemy code's returns, capacity freed by a
        # closed connection), which the pool does not announce: it looks every 50 ms.
        deadline = began + pool._timeout
        ticket = _Ticket()
        ticket.began = began
        with self.line_lock:
            # In order of arrival: those who waited on the pool first come first,
            # whichever of them noticed its turn to join first.
            line = self.line
            place = len(line)
            while place > 0 and line[place - 1].began > began:
                place -= 1
            line.insert(place, ticket)
            self._next_in_line()
        first = False
        try:
            while True:
                remaining = deadline - time.monotonic()
                ticket.wait(min(max(remaining, 0.0), 0.05))
                # Before giving up, take back what borrowers left: orphans, and the
                # connections of threads that ended (the first in line looks).
                if ORPHANS:
                    _return_orphans()
                if first and self.borrowed:
                    self.reap()
                with self.line_lock:
                    handed = ticket.record
                    if handed is not None and not self.life.retired:
                        return handed  # handed over, and out of the line
                    if handed is not None:
                        # Handed over by a pool being disposed of (closed, most
                        # likely): lending it would open a connection to a database
                        # about to be dropped. Close it, outside the lock.
                        break
                    # Not served yet: sleep again until handed a connection, made
                    # first in line, or 50 ms have passed. (Cleared under the lock,
                    # which _hand_over and _next_in_line hold to set it.)
                    ticket.clear()
                    if self.life.retired:
                        self.line.remove(ticket)
                        self._next_in_line()
                        raise self._closed()
                    first = self.line[0] is ticket
                    if first:
                        try:
                            record = pool._pool.get(False)
                        except sqla_queue.Empty:
                            record = None
                        if record is None and self.parked:
                            record = _take_parked(self.parked)
                        if record is not None:
                            self.line.popleft()
                            self._next_in_line()
                            return cast("_ConnectionRecord", record)
                        if pool._inc_overflow():
                            self.line.popleft()
                            self._next_in_line()
                            break  # open a connection, outside the lock
                    if remaining <= 0:
                        self.line.remove(ticket)
                        self._next_in_line()
                        raise _timeout_error(pool)
        except BaseException:
            with self.line_lock:
                if ticket in self.line:
                    self.line.remove(ticket)
                    self._next_in_line()
                record = ticket.record
            if record is not None:  # handed over as this thread gave up
                self._hand_over(record)
            raise
        if ticket.record is not None:  # handed over, but the pool was retired
            self._close_retired(ticket.record)
            raise self._closed()
        try:
            return cast("_ConnectionRecord", pool._create_connection())
        except BaseException:
            pool._dec_overflow()
            raise

    def _next_in_line(self) -> None:
        # Under line_lock: wake the new first in line at once, not 50 ms later.
        if self.line:
            self.line[0].set()

    def _hand_over(self, record: _ConnectionRecord) -> None:
        """Give a returned entry to the first waiter in line, or back to the pool."""
        if not (self.line and self._give_to_first(record)):
            record.checkin(_fairy_was_created=False)

    def _give_to_first(
        self, record: ConnectionPoolEntry, blocking: bool = True
    ) -> bool:
        """Hand ``record`` to the first waiter in line; False if there is none.

        With ``blocking`` false, also False when the line's lock is taken.
        """
        if not self.line_lock.acquire(blocking):
            return False
        try:
            if not self.line:
                return False
            ticket = self.line.popleft()
            ticket.record = record  # type: ignore[assignment]
            ticket.set()
            self._next_in_line()
            return True
        finally:
            self.line_lock.release()

    def _exhausted(self) -> None:
        self.counters.add("checkout_timeouts")
        monitoring.send(
            monitoring.pool_exhausted,
            alias=self.alias,
            timeout=self.settings.pool_timeout,
            stats=self.stats(),
        )

    def _slow(self, waited: float) -> None:
        stats = self.stats()
        monitoring.logger.warning(
            "a checkout of %r waited %.1f ms (slow_checkout_ms=%g): %d of %d "
            "connections checked out, %d threads waiting",
            self.alias,
            waited * 1000,
            self.settings.slow_checkout_ms,
            stats.checked_out,
            stats.capacity,
            stats.waiting,
        )

    def _watch(self, record: ConnectionPoolEntry, skip: int) -> None:
        assert self.leak_threshold is not None
        held = Held(self.alias, self.leak_threshold, skip=skip + 1)
        record.info[INFO_HELD] = held
        monitoring.LEAKS.watch(held, self.leak_threshold)

    def stats(self) -> PoolStats:
        """A snapshot of this pool: see :class:`~django_poolconf.monitoring.PoolStats`."""
        settings = self.settings
        return monitoring.snapshot(
            self.alias,
            "primary" if settings.replica_of is None else "replica",
            self.engine.pool,  # type: ignore[arg-type]
            settings.capacity,
            self.counters,
            in_line=len(self.line),
        )

    def give_back(self, record: _ConnectionRecord, park: object = None) -> bool:
        """Reset a borrowed entry and check it back in (closed, if it cannot be reset).

        With a ``park`` key, and nobody waiting, the entry is parked under it instead:
        idle, but kept for :meth:`reclaim`. Return whether it was parked.
        """
        if _refuse_foreign(record):
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
        if monitoring.logger.isEnabledFor(logging.DEBUG):
            monitoring.logger.debug("checked in a connection of %r", self.alias)
        if (
            park is not None
            and not self.line
            and record.dbapi_connection is not None  # not closed by check_in()
            and INFO_NEW not in record.info  # not reset fully: Django sets it up
        ):
            parked = self.parked
            queue = self.engine.pool._pool  # type: ignore[attr-defined]
            # At most pool_size idle connections, parked or queued: one more goes
            # through the pool, which closes it, as it closes overflow connections.
            if len(queue.queue) + len(parked) < queue.maxsize:
                parked[park] = record
                # A borrower that joined the line meanwhile may have looked already,
                # and a dispose may have closed the parked ones already.
                if not (self.line or self.life.retired):
                    return True
                if parked.pop(park, None) is None:
                    return True  # taken meanwhile: the taker has it
                if self.life.retired:
                    self._close_retired(record)
                    return False
        self._hand_over(record)
        return False

    def _close_retired(self, record: _ConnectionRecord) -> None:
        """Close an entry of a disposed pool, and give its place back."""
        if _refuse_foreign(record):
            return
        try:
            record.invalidate(Invalidation("its pool was disposed of", quiet=True))
        finally:
            self._hand_over(record)

    def unpark(self, key: object) -> None:
        """Check the entry parked under ``key`` into the pool, if nobody took it."""
        record = self.parked.pop(key, None)
        if record is not None and not _refuse_foreign(record):
            self._hand_over(record)

    def discard(
        self, record: _ConnectionRecord, reason: str, older_too: bool = False
    ) -> None:
        """Close a borrowed entry's connection, and with ``older_too`` every older one."""
        if _refuse_foreign(record):
            return
        try:
            if older_too:
                _invalidate_older(self.engine.pool, record, self.alias)
            record.invalidate(Invalidation(reason))
        finally:
            self._hand_over(record)

    def note_returned(self, record: ConnectionPoolEntry) -> None:
        """Count the hold time of a returned connection and end its leak watch."""
        info = record.info
        borrowed_at = info.pop(INFO_BORROWED_AT, None)
        if borrowed_at is not None:
            self.counters.checked_in(time.monotonic() - borrowed_at)
        held = info.pop(INFO_HELD, None)
        if held is not None:
            monitoring.LEAKS.release(held)

    def forget_fork_state(self) -> None:
        """In a forked child: drop the parent's waiters, locks and counts."""
        self.line = deque()
        self.line_lock = threading.Lock()
        # The parent's sockets: keep them referenced, never use or close them.
        INHERITED.extend(self.parked.values())
        self.parked = {}
        INHERITED.extend(record for record, _ in self.borrowed.copy().values())
        self.borrowed = {}
        self.pid = os.getpid()
        self.counters.reset()

    def check_out(
        self,
        dbapi_connection: Any,
        record: ConnectionPoolEntry,
        timeout: float | None = None,
    ) -> None:
        """Make sure a connection about to be lent works, at a round trip's cost only when needed.

        Its waits (the reset's result, a ping) take at most ``timeout`` seconds each,
        ``validation_timeout`` by default.
        """
        if self.life.retired:
            raise self._closed()
        if timeout is None:
            timeout = self.validation_timeout
        hooks = self.hooks
        # The reset sent when the connection was returned has had the idle time to
        # finish: its result is usually here already, and costs no wait.
        if not hooks.complete_reset(dbapi_connection, timeout):
            raise exc.DisconnectionError(
                f"its reset failed, or did not finish within {timeout:g} s"
            )
        info = record.info
        if info.pop(INFO_FRESH, False) or not self.pre_ping:
            return  # a connection opened just now needs no ping
        # The ping is the only round trip here, and only for a connection that has
        # been idle a while or that the server visibly closed while idle.
        if time.monotonic() - info[
            INFO_RETURNED_AT
        ] > self.threshold or hooks.closed_while_idle(dbapi_connection):
            ok = hooks.ping(dbapi_connection, timeout)
            counters = self.counters
            with counters.lock:
                counters.pre_pings += 1
                counters.pre_ping_failures += not ok
            if not ok:
                raise exc.InvalidatePoolError(
                    f"closed, or no answer to a ping within {timeout:g} s"
                )

    def check_in(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        """Make a returned connection clean for the next borrower; raise to have it closed."""
        self.note_returned(record)
        if self.life.retired:
            # Borrowed before the pool was disposed: close it, do not keep it.
            record.invalidate(Invalidation("its pool was disposed of", quiet=True))
            return
        info = record.info
        if self.hooks.reset(dbapi_connection, self.policy):
            # The session is as new again: Django must initialize it once more.
            info[INFO_NEW] = True
        info[INFO_RETURNED_AT] = time.monotonic()


#: Connections whose Django connection object was collected while borrowing or
#: keeping them parked: (lender, record, error kind or PARKED, borrowing thread),
#: appended by the object's finalizer, which may run in any thread at any
#: allocation, even while a lock of this module is held. So it only appends; the
#: next checkout in the process, a waiter or the reaper gives them back.
ORPHANS: Final[deque[tuple[Lender, Any, str | None, threading.Thread | None]]] = deque()
#: The error kind of an orphan that was parked: reset already, nothing leaked.
PARKED: Final = "parked"


def _return_orphans() -> None:
    while True:
        try:
            lender, record, error, thread = ORPHANS.popleft()
        except IndexError:
            return
        if _refuse_foreign(record):
            continue  # a parent's, queued in a forked child: never touch its socket
        if error == PARKED:
            if lender.life.retired:
                lender._close_retired(record)
            else:
                lender._hand_over(record)
            continue
        lender._return_abandoned(
            record,
            error,
            "its Django connection object was collected"
            + ("" if thread is None else f" (borrowed by thread {thread.name!r})"),
        )


def _alive(thread: threading.Thread) -> bool:
    try:
        return thread.is_alive()
    except Exception:  # pragma: no cover - a dummy thread stopped by a fork
        return True  # not a thread threading started and can tell about: keep it


class _Reaper:
    """One daemon thread per process that returns what borrowers left behind.

    Like Rails' connection pool reaper: a connection whose borrowing thread has ended
    without closing it is rolled back and returned, and orphans are given back,
    within :data:`REAP_INTERVAL_S` even when nobody checks out. Waiters do the same
    before they give up, so none times out while such a connection waits.
    """

    def __init__(self) -> None:
        self.pid = 0  # the process whose reaper thread runs
        self.lock = threading.Lock()
        self.lenders: weakref.WeakSet[Lender] = weakref.WeakSet()

    def add(self, lender: Lender) -> None:
        with self.lock:
            self.lenders.add(lender)

    def all(self) -> list[Lender]:
        with self.lock:
            return list(self.lenders)

    def start(self, pid: int) -> None:
        with self.lock:
            if self.pid == pid:
                return
            self.pid = pid
        threading.Thread(
            target=self._run, name="django_poolconf-reaper", daemon=True
        ).start()

    def forget_fork_state(self) -> None:
        """In a forked child: the parent's thread does not run here."""
        self.lock = threading.Lock()

    def _run(self) -> None:
        while True:
            time.sleep(REAP_INTERVAL_S)
            try:
                if ORPHANS:
                    _return_orphans()
                for lender in self.all():
                    if lender.borrowed:
                        lender.reap()
            except Exception:  # pragma: no cover - keep reaping; retry next round
                logger.exception("returning abandoned connections failed")


REAPER: Final = _Reaper()


class _Ticket(threading.Event):
    """A place in a Lender's line; ``record`` is set when a connection is handed over."""

    record: _ConnectionRecord | None = None
    began = 0.0  # when its checkout began (monotonic seconds)


def _take(
    pool: Any, parked: dict[object, _ConnectionRecord]
) -> _ConnectionRecord | None:
    """An idle entry of the pool, or a new one under capacity; None at capacity."""
    try:
        return cast("_ConnectionRecord", pool._pool.get(False))
    except sqla_queue.Empty:
        pass
    if parked:
        # A parked connection is idle too: take it rather than open another.
        record = _take_parked(parked)
        if record is not None:
            return record
    if pool._inc_overflow():
        try:
            return cast("_ConnectionRecord", pool._create_connection())
        except BaseException:
            pool._dec_overflow()
            raise
    return None


def _take_parked(parked: dict[object, _ConnectionRecord]) -> _ConnectionRecord | None:
    """The longest parked entry, or None when there is none left to take.

    The longest parked is the one whose owner is least likely to be back for it.
    """
    while parked:
        try:
            key = next(iter(parked))
        except (StopIteration, RuntimeError):  # emptied, or changed meanwhile
            continue
        record = parked.pop(key, None)
        if record is not None:
            return record
    return None


def _due_for_replacement(pool: Any, record: _ConnectionRecord) -> bool:
    """Whether the pool would reconnect ``record`` at its next checkout, as get_connection() decides."""
    started = record.starttime
    return (
        (pool._recycle > -1 and time.time() - started > pool._recycle)
        or pool._invalidate_time > started
        or getattr(record, "_soft_invalidate_time", 0) > started
    )


def _timeout_error(pool: Any) -> exc.TimeoutError:
    return exc.TimeoutError(
        f"QueuePool limit of size {pool.size()} overflow {pool._max_overflow} "
        f"reached, connection timed out, timeout {pool._timeout:.2f}"
    )


def _invalidate_older(pool: Any, record: _ConnectionRecord, alias: str) -> None:
    # What Pool._invalidate() does: connections opened before this one went to the
    # same server before the same event, so they are replaced when next checked out.
    if pool._invalidate_time < record.starttime:
        pool._invalidate_time = time.time()
        monitoring.logger.warning(
            "replacing every connection of %r opened before now", alias
        )


def _listen(lender: Lender) -> None:
    engine = lender.engine
    recycle = lender.settings.pool_recycle
    alias = lender.alias
    counters = lender.counters
    for_sqlalchemy = lender.hooks.for_sqlalchemy
    check_out = lender.check_out
    check_in = lender.check_in
    pool_logger = monitoring.logger

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        info = record.info
        info[INFO_NEW] = info[INFO_FRESH] = True
        info[INFO_PID] = os.getpid()
        info[INFO_RETURNED_AT] = time.monotonic()
        if recycle is not None:
            # Age the connection by a random fraction of its lifetime. Never age it
            # past the pool's last invalidation, or it would be recycled at once.
            jittered = record.starttime - random.uniform(0, RECYCLE_JITTER * recycle)  # type: ignore[attr-defined]
            record.starttime = max(jittered, engine.pool._invalidate_time + 1e-6)  # type: ignore[attr-defined]
        counters.add("connections_opened")
        pool_logger.debug("opened a connection for %r", alias)

    @event.listens_for(engine, "close")
    def on_close(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        counters.add("connections_closed")
        if (
            recycle is not None
            and time.time() - record.starttime > recycle  # type: ignore[attr-defined]
            and engine.pool._invalidate_time <= record.starttime  # type: ignore[attr-defined]
            and not record.info.pop(INFO_INVALIDATED, False)
            and not lender.life.retired
        ):
            counters.add("recycled")
            pool_logger.debug("recycled a connection of %r (pool_recycle)", alias)

    @event.listens_for(engine, "invalidate")
    def on_invalidate(
        dbapi_connection: Any,
        record: ConnectionPoolEntry,
        error: BaseException | None,
    ) -> None:
        # An invalidated connection goes back without a reset: end its loan here.
        lender.note_returned(record)
        record.info[INFO_INVALIDATED] = True  # for on_close, which comes next
        counters.add("connections_invalidated")
        reason = monitoring.describe(error)
        if isinstance(error, Invalidation) and error.quiet:
            # An expected close (its pool was disposed of), not an unusable
            # connection: no warning, and no connection_invalidated.
            pool_logger.debug("closing a connection of %r: %s", alias, reason)
            return
        pool_logger.warning("closing a connection of %r: %s", alias, reason)
        monitoring.send(monitoring.connection_invalidated, alias=alias, reason=reason)

    # SQLAlchemy code's checkouts and returns; Django's go through the Lender.

    @event.listens_for(engine, "checkout")
    def on_checkout(
        dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any
    ) -> None:
        check_out(dbapi_connection, record)
        # Django sets what it needs on every connect; SQLAlchemy expects a
        # connection as the driver makes it.
        for_sqlalchemy(dbapi_connection)
        record.info[INFO_BORROWED_AT] = time.monotonic()
        # SQLAlchemy fires no event before it waits, so its waits are not timed.
        counters.add("checkouts")
        if lender.leak_threshold is not None:
            lender._watch(record, skip=1)
        if pool_logger.isEnabledFor(logging.DEBUG):
            pool_logger.debug("checked out a connection of %r", alias)

    # SQLAlchemy runs "reset" right before it checks a connection in; doing the
    # check-in bookkeeping here too saves a second listener call on every return.
    @event.listens_for(engine, "reset")
    def on_reset(
        dbapi_connection: Any, record: ConnectionPoolEntry, state: PoolResetState
    ) -> None:
        if not state.terminate_only and not _refuse_foreign(record):
            check_in(dbapi_connection, record)
            if pool_logger.isEnabledFor(logging.DEBUG):
                pool_logger.debug("checked in a connection of %r", alias)


def stats_of(alias: str) -> PoolStats | None:
    """A snapshot of ``alias``'s pool in this process, or None if it has none."""
    entry = _registry.get(alias)
    if entry is None or entry.pid != os.getpid():
        return None
    return entry.lender.stats()


def histogram_of(alias: str, kind: str) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets and the sum (seconds) of ``kind``: "wait" or "hold"."""
    from django_poolconf.metrics import _cumulative

    entry = _registry.get(alias)
    if entry is None:
        return _cumulative([0] * (len(monitoring.BUCKETS) + 1)), 0.0
    counters = entry.lender.counters
    with counters.lock:
        counts = list(getattr(counters, f"{kind}_buckets"))
        total = getattr(counters, f"{kind}_total")
    return _cumulative(counts), total


def all_stats() -> dict[str, PoolStats]:
    """Snapshots of every pool this process has built, by alias."""
    return {
        alias: entry.lender.stats()
        for alias, entry in list(_registry.items())
        if entry.pid == os.getpid()
    }


# -- processes ----------------------------------------------------------------


def _abandon_inherited(entry: _Registered) -> None:
    """Drop a pool inherited across fork() without touching its sockets.

    Closing the parent's connections from the child would end the parent's sessions,
    so the child only forgets them; psycopg does not close a connection that another
    process opened when it is garbage-collected.
    """
    entry.engine.dispose(close=False)
    if entry.async_engine is not None:
        entry.async_engine.sync_engine.dispose(close=False)
    entry.lender.forget_fork_state()
    entry.pid = os.getpid()


def _after_fork_in_child() -> None:
    global _lock
    # Another thread of the parent may have held the lock at fork time.
    _lock = threading.Lock()
    monitoring.LEAKS.forget_fork_state()
    REAPER.forget_fork_state()
    for entry in list(_registry.values()):
        _abandon_inherited(entry)
    pid = os.getpid()
    for lender in REAPER.all():  # disposed engines' too: their loans are the parent's
        if lender.pid != pid:
            lender.forget_fork_state()
    # Last: a collection during this hook may have queued some of the parent's.
    ORPHANS.clear()
    from django.db import connections

    try:
        wrappers = connections.all(initialized_only=True)
    except ImproperlyConfigured:  # settings not configured: no Django connection
        return
    # The forking thread's Django connections may hold a checked-out connection of
    # the parent: forget it, so the child opens its own.
    for wrapper in wrappers:
        forget = getattr(wrapper, "forget_inherited_connection", None)
        if forget is not None:
            forget()


process.on_fork(process.POOLS, _after_fork_in_child)
process.on_exit(process.POOLS, dispose_all)
