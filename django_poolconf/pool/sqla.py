"""The one module that touches SQLAlchemy's private pool internals.

Django's checkouts borrow ``QueuePool``'s records without SQLAlchemy's checkout: they
take an idle record from the pool's queue, reserve an overflow slot and open a record
in it, and check a record back in without a fairy (the proxy SQLAlchemy code gets).
None of that is public API, so every use goes through the narrow functions below, and
:func:`missing_internals` checks, when the first engine is built, that every name they
rely on exists (see :mod:`django_poolconf.compat`).

:class:`LendingPool` is the engine's pool class: SQLAlchemy code's checkouts and
returns go through the engine's lender too, so that both kinds of borrower wait in one
line and share the parked connections.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Sized
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from sqlalchemy import exc
from sqlalchemy.pool import ConnectionPoolEntry, Pool, QueuePool
from sqlalchemy.util import queue as sqla_queue

if TYPE_CHECKING:
    from sqlalchemy.pool.base import _ConnectionRecord

__all__ = [
    "LendingPool",
    "age",
    "checkin",
    "checkin_failed",
    "closed_for_age",
    "create",
    "invalidate_older",
    "missing_internals",
    "overflow",
    "queue_sizes",
    "shrink",
    "take_idle",
    "timeout_error",
    "try_grow",
    "wait_timeout",
]

#: Implemented by ``QueuePool`` (``Pool`` has abstract ones): :class:`LendingPool`
#: overrides the first two and the functions below call the rest.
QUEUE_POOL_METHODS: Final = (
    "_do_get",
    "_do_return_conn",
    "_inc_overflow",
    "_dec_overflow",
)
#: On ``Pool``.
POOL_METHODS: Final = ("_create_connection",)
#: Set on a ``QueuePool`` by its constructor.
POOL_FIELDS: Final = (
    "_pool",
    "_overflow",
    "_max_overflow",
    "_timeout",
    "_recycle",
    "_invalidate_time",
)
#: On ``sqlalchemy.util.queue.Queue``, the pool's ``_pool``.
QUEUE_FIELDS: Final = ("queue", "maxsize", "get")


# -- the pool's queue and overflow ---------------------------------------------------


def take_idle(pool: Any) -> _ConnectionRecord | None:
    """An idle record of the pool's queue, without waiting; None if there is none."""
    try:
        return cast("_ConnectionRecord", pool._pool.get(False))
    except sqla_queue.Empty:
        return None


def due_for_replacement(pool: Any, record: ConnectionPoolEntry) -> bool:
    """Whether the pool would reconnect ``record`` at its next checkout, as get_connection() decides."""
    started: float = record.starttime  # type: ignore[attr-defined]
    return bool(
        (pool._recycle > -1 and time.time() - started > pool._recycle)
        or pool._invalidate_time > started
        or getattr(record, "_soft_invalidate_time", 0) > started
    )


def try_grow(pool: Any) -> bool:
    """Reserve a slot for one more connection; False at capacity.

    Follow with :func:`create`, which gives the slot back if opening fails.
    """
    return bool(pool._inc_overflow())


def shrink(pool: Any) -> None:
    """Give back the slot of a connection that was closed, or never opened."""
    pool._dec_overflow()


def create(pool: Any) -> _ConnectionRecord:
    """Open a record in a slot reserved by :func:`try_grow`; the slot is given back on failure."""
    try:
        return cast("_ConnectionRecord", pool._create_connection())
    except BaseException:
        pool._dec_overflow()
        raise


def queue_sizes(pool: Any) -> tuple[int, int]:
    """How many records wait idle in the pool's queue, and how many it holds at most."""
    queue = pool._pool
    return len(queue.queue), queue.maxsize


def overflow(pool: Any) -> int:
    """Connections open beyond ``pool_size`` (negative while fewer are open)."""
    return pool._overflow  # type: ignore[no-any-return]


def wait_timeout(pool: Any) -> float:
    """The pool's ``pool_timeout``, in seconds."""
    return pool._timeout  # type: ignore[no-any-return]


def timeout_error(pool: Any) -> exc.TimeoutError:
    """The error SQLAlchemy raises when no connection was free within ``pool_timeout``."""
    return exc.TimeoutError(
        f"QueuePool limit of size {pool.size()} overflow {pool._max_overflow} "
        f"reached, connection timed out, timeout {pool._timeout:.2f}"
    )


# -- records -------------------------------------------------------------------------


def invalidate_older(pool: Any, record: ConnectionPoolEntry) -> bool:
    """Have every connection opened before ``record`` replaced at its next checkout.

    What ``Pool._invalidate()`` does: connections opened before this one went to the
    same server before the same event. Return False if the pool was invalidated
    since ``record`` was opened already.
    """
    if pool._invalidate_time < record.starttime:  # type: ignore[attr-defined]
        pool._invalidate_time = time.time()
        return True
    return False


def age(pool: Any, record: ConnectionPoolEntry, seconds: float) -> None:
    """Date ``record``'s opening ``seconds`` earlier, for ``pool_recycle``.

    Never before the pool's last invalidation, or it would be recycled at once.
    """
    aged = record.starttime - seconds  # type: ignore[attr-defined]
    record.starttime = max(aged, pool._invalidate_time + 1e-6)  # type: ignore[attr-defined]


def closed_for_age(pool: Any, record: ConnectionPoolEntry, recycle: float) -> bool:
    """Whether ``record``, being closed, outlived ``recycle`` seconds and no invalidation replaced it."""
    started: float = record.starttime  # type: ignore[attr-defined]
    return time.time() - started > recycle and pool._invalidate_time <= started


def checkin(record: _ConnectionRecord) -> None:
    """Check a record Django borrowed (no fairy) back into its pool."""
    record.checkin(_fairy_was_created=False)


def checkin_failed(record: _ConnectionRecord, error: BaseException) -> None:
    """Close a record whose checkout failed, and give its place back."""
    record._checkin_failed(error, _fairy_was_created=False)


# -- the engine's pool class ---------------------------------------------------------


class Lending(Protocol):
    """What :class:`LendingPool` asks of the lender it lends through."""

    parked: Sized

    def checkout_for_sqlalchemy(self, pool: LendingPool) -> ConnectionPoolEntry:
        """A record for SQLAlchemy code: idle, parked, new, or waited for in line."""

    def checkin_from_sqlalchemy(
        self, pool: LendingPool, record: ConnectionPoolEntry
    ) -> bool:
        """Hand a record SQLAlchemy code returned on, or close it; False to queue it."""

    def close_parked(self) -> None:
        """Close the parked connections (this process's): their pool is being disposed of."""


class LendingPool(QueuePool):
    """SQLAlchemy's ``QueuePool``, with the lender's parked connections counted as idle.

    Connections parked with a Django connection object between requests (see
    ``thread_affinity``) are checked out as far as ``QueuePool`` knows, but idle
    and free to take: SQLAlchemy code's checkouts take one when no other is idle
    before opening a connection or waiting, and wait in the lender's line, first
    come, first served, as Django's do. ``checkedin()``, ``checkedout()`` and
    ``status()`` count parked connections as idle.
    """

    lender: Lending | None = None

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
        if lender is not None:
            lender.close_parked()

    def _do_get(self) -> ConnectionPoolEntry:
        lender = self.lender
        if lender is None:
            return super()._do_get()
        return lender.checkout_for_sqlalchemy(self)

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        lender = self.lender
        if lender is None or not lender.checkin_from_sqlalchemy(self, record):
            super()._do_return_conn(record)

    def checkedin(self) -> int:
        lender = self.lender
        return super().checkedin() + (0 if lender is None else len(lender.parked))

    def checkedout(self) -> int:
        lender = self.lender
        return super().checkedout() - (0 if lender is None else len(lender.parked))


# -- the startup self-check ----------------------------------------------------------


def missing_internals(pool: Any) -> list[str]:
    """The private names above that this SQLAlchemy lacks, as ``QueuePool._do_get``."""
    missing = [
        f"QueuePool.{name}"
        for name in QUEUE_POOL_METHODS
        if not _implemented(QueuePool, Pool, name)
    ]
    missing += [f"Pool.{name}" for name in POOL_METHODS if not hasattr(Pool, name)]
    missing += [
        f"QueuePool().{name}" for name in POOL_FIELDS if not hasattr(pool, name)
    ]
    queue = getattr(pool, "_pool", None)
    missing += [
        f"QueuePool()._pool.{name}"
        for name in QUEUE_FIELDS
        if queue is not None and not hasattr(queue, name)
    ]
    try:
        queue_module = importlib.import_module("sqlalchemy.util.queue")
        from sqlalchemy.pool.base import _ConnectionRecord
    except ImportError as error:
        return [*missing, f"{error.name or 'a module'} ({error})"]
    if not hasattr(queue_module, "Empty"):
        missing.append("sqlalchemy.util.queue.Empty")
    checkin_failed = getattr(_ConnectionRecord, "_checkin_failed", None)
    if checkin_failed is None or (
        "_fairy_was_created" not in inspect.signature(checkin_failed).parameters
    ):
        missing.append("_ConnectionRecord._checkin_failed(_fairy_was_created=)")
    return missing


def _implemented(cls: type, abstract: type, name: str) -> bool:
    # Defined by ``cls`` or a class between it and ``abstract``, whose own is a stub.
    return any(
        name in vars(klass)
        for klass in cls.__mro__
        if klass is not abstract and issubclass(klass, abstract)
    )
