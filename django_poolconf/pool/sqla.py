"""The one module that touches SQLAlchemy's private pool internals.

:class:`LendingPool` is the engine's pool class: a :class:`sqlalchemy.pool.Pool` that
implements SQLAlchemy's hooks for a pool class (``_do_get``, ``_do_return_conn``) and
its numbers (``size()``, ``checkedin()``, ...) over the lender's
:class:`~django_poolconf.pool.state.PoolState`, so that SQLAlchemy code and Django
share one state: they wait in one line, share the parked connections and count
alike. Django's checkouts go round SQLAlchemy's checkout: they open a record in room
the state reserved, and check a record back in without a fairy (the proxy SQLAlchemy
code gets). None of that is public API, so every use goes through the narrow
functions below, and :func:`missing_internals` checks, when the first engine is
built, that every name they rely on exists (see :mod:`django_poolconf.compat`).
"""

from __future__ import annotations

import inspect
import time
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from sqlalchemy import exc
from sqlalchemy.pool import ConnectionPoolEntry, Pool

from django_poolconf.pool.state import PoolState

if TYPE_CHECKING:
    from sqlalchemy.pool.base import _ConnectionRecord

__all__ = [
    "LendingPool",
    "age",
    "checkin",
    "checkin_failed",
    "closed_for_age",
    "create",
    "due_for_replacement",
    "invalidate_older",
    "missing_internals",
    "opened_by",
    "replace_opened_by",
]

#: Defined on ``Pool`` and called by SQLAlchemy: :class:`LendingPool` implements the
#: first two, and :func:`create` calls the third.
POOL_METHODS: Final = ("_do_get", "_do_return_conn", "_create_connection")
#: Set on a ``Pool`` by its constructor, and read by its records.
POOL_FIELDS: Final = ("_recycle", "_invalidate_time")
#: Methods of ``_ConnectionRecord`` called with its private ``_fairy_was_created``.
RECORD_METHODS: Final = ("checkin", "_checkin_failed")


def create(pool: Any) -> _ConnectionRecord:
    """Open a record (a new connection) of ``pool``, in room its state reserved."""
    return cast("_ConnectionRecord", pool._create_connection())


def due_for_replacement(pool: Any, record: ConnectionPoolEntry) -> bool:
    """Whether the pool would reconnect ``record`` at its next checkout, as get_connection() decides."""
    started: float = record.starttime  # type: ignore[attr-defined]
    return bool(
        (pool._recycle > -1 and time.time() - started > pool._recycle)
        or pool._invalidate_time > started
        or getattr(record, "_soft_invalidate_time", 0) > started
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


def replace_opened_by(pool: Any, when: float) -> None:
    """Have every connection opened by ``when`` (:func:`time.time`) replaced at its next checkout."""
    if pool._invalidate_time < when:
        pool._invalidate_time = when


def opened_by(record: ConnectionPoolEntry, when: float) -> bool:
    """Whether ``record``'s connection was opened by ``when`` (:func:`time.time`)."""
    return bool(record.starttime <= when)  # type: ignore[attr-defined]


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

    state: PoolState[Any]

    def checkout_for_sqlalchemy(self) -> ConnectionPoolEntry:
        """A record for SQLAlchemy code: idle, parked, new, or waited for in line."""

    def return_record(self, record: ConnectionPoolEntry) -> None:
        """Take in a record checked in through the pool: hand it over, keep it, or close it."""

    def close_idle(self) -> int:
        """Close this process's idle and parked connections; return how many."""


class LendingPool(Pool):
    """The engine's pool: SQLAlchemy's pool interface over the lender's state.

    At most ``pool_size`` connections stay idle and ``pool_size + max_overflow`` are
    open, and a checkout waits up to ``timeout`` seconds, as with
    :class:`~sqlalchemy.pool.QueuePool`, whose numbers it reports the same way. Unlike
    it, waiters are served first come, first served, whoever returns the connection,
    and connections parked with a Django connection object between requests
    (``thread_affinity``) count as idle and are taken when no other is. The registry
    sets :attr:`lender` as it builds the engine.
    """

    lender: Lending | None = None
    # Its log lines ("Pool disposed", ...) belong with SQLAlchemy's pools, configured
    # by the "sqlalchemy.pool" logger, not under this module's name, where an app
    # that logs django_poolconf at INFO would get them.
    _sqla_logger_namespace = "sqlalchemy.pool.impl.LendingPool"

    def __init__(
        self,
        creator: Any,
        pool_size: int = 5,
        max_overflow: int = 10,
        timeout: float = 30.0,
        **kw: Any,
    ) -> None:
        super().__init__(creator, **kw)
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.pool_timeout = timeout

    def _lender(self) -> Lending:
        lender = self.lender
        if lender is None:
            raise exc.InvalidRequestError(
                "A LendingPool lends through its engine's lender: build the engine "
                "with django_poolconf.get_engine()."
            )
        return lender

    def _do_get(self) -> ConnectionPoolEntry:
        return self._lender().checkout_for_sqlalchemy()

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        self._lender().return_record(record)

    def dispose(self) -> None:
        # The idle and parked connections are closed; those still borrowed are
        # replaced when next checked out, as after an invalidation of the pool.
        lender = self.lender
        if lender is not None:
            lender.close_idle()
        self._invalidate_time = time.time()
        self.logger.info("Pool disposed. %s", self.status())

    def recreate(self) -> LendingPool:
        # Engine.dispose() replaces its pool with this after dispose(): the pool
        # lends on, emptied, and its state still counts what is borrowed.
        self.logger.info("Pool recreating")
        return self

    def _numbers(self) -> tuple[int, int, int, int, int]:
        lender = self.lender
        if lender is None:
            return (self.pool_size, 0, 0, -self.pool_size, 0)
        return lender.state.numbers()

    def status(self) -> str:
        size, checked_in, checked_out, overflow, _ = self._numbers()
        return (
            f"Pool size: {size}  Connections in pool: {checked_in} Current "
            f"Overflow: {overflow} Current Checked out connections: {checked_out}"
        )

    def size(self) -> int:
        """``pool_size``: how many connections stay open while idle."""
        return self.pool_size

    def timeout(self) -> float:
        """``pool_timeout``: how long a checkout waits for a connection, in seconds."""
        return self.pool_timeout

    def checkedin(self) -> int:
        """Idle connections, parked ones included."""
        return self._numbers()[1]

    def checkedout(self) -> int:
        """Connections lent now (parked ones are idle)."""
        return self._numbers()[2]

    def overflow(self) -> int:
        """Connections open beyond ``pool_size``; negative while fewer are open."""
        return self._numbers()[3]


# -- the startup self-check ----------------------------------------------------------


def missing_internals(pool: Any) -> list[str]:
    """The private names above that this SQLAlchemy lacks, as ``Pool._do_get``."""
    missing = [f"Pool.{name}" for name in POOL_METHODS if name not in vars(Pool)]
    missing += [f"Pool().{name}" for name in POOL_FIELDS if not hasattr(pool, name)]
    try:
        from sqlalchemy.pool.base import _ConnectionRecord
    except ImportError as error:
        return [*missing, f"{error.name or 'a module'} ({error})"]
    for name in RECORD_METHODS:
        method = getattr(_ConnectionRecord, name, None)
        if method is None or (
            "_fairy_was_created" not in inspect.signature(method).parameters
        ):
            missing.append(f"_ConnectionRecord.{name}(_fairy_was_created=)")
    return missing
