"""The SQLAlchemy pool events of an engine: SQLAlchemy code's checkouts and every connection's life.

Django's checkouts go through the :class:`~django_poolconf.pool.lender.Lender`
directly, so for them the pool fires ``connect``, ``close`` and ``invalidate``, but not
``checkout`` or ``reset``.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState

from django_poolconf import signals
from django_poolconf.pool import sqla
from django_poolconf.pool.hooks import (
    INFO_BORROWED_AT,
    INFO_FRESH,
    INFO_INVALIDATED,
    INFO_NEW,
    INFO_RETURNED_AT,
)
from django_poolconf.pool.lender import Lender
from django_poolconf.pool.ownership import refuse_foreign, stamp
from django_poolconf.signals import Invalidation

__all__ = ["RECYCLE_JITTER", "listen"]

#: Recycling takes up to this fraction off ``pool_recycle``, so that connections
#: opened together are not all replaced together (psycopg_pool takes up to 5 %).
RECYCLE_JITTER: Final = 0.05


def listen(lender: Lender) -> None:
    """Register the listeners of ``lender``'s engine."""
    engine = lender.engine
    recycle = lender.settings.pool_recycle
    alias = lender.alias
    counters = lender.counters
    for_sqlalchemy = lender.hooks.for_sqlalchemy
    check_out = lender.check_out
    check_in = lender.check_in
    pool_logger = signals.logger

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        info = record.info
        info[INFO_NEW] = info[INFO_FRESH] = True
        stamp(record)
        info[INFO_RETURNED_AT] = time.monotonic()
        if recycle is not None:
            # Age the connection by a random fraction of its lifetime.
            sqla.age(engine.pool, record, random.uniform(0, RECYCLE_JITTER * recycle))
        counters.add("connections_opened")
        pool_logger.debug("opened a connection for %r", alias)

    @event.listens_for(engine, "close")
    def on_close(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        counters.add("connections_closed")
        if (
            recycle is not None
            and sqla.closed_for_age(engine.pool, record, recycle)
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
        reason = signals.describe(error)
        if isinstance(error, Invalidation) and error.quiet:
            # An expected close (its pool was disposed of), not an unusable
            # connection: no warning, and no connection_invalidated.
            pool_logger.debug("closing a connection of %r: %s", alias, reason)
            return
        pool_logger.warning("closing a connection of %r: %s", alias, reason)
        signals.send(signals.connection_invalidated, alias=alias, reason=reason)

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
            lender.watch(record, skip=1)
        if pool_logger.isEnabledFor(logging.DEBUG):
            pool_logger.debug("checked out a connection of %r", alias)

    # SQLAlchemy runs "reset" right before it checks a connection in; doing the
    # check-in bookkeeping here too saves a second listener call on every return.
    @event.listens_for(engine, "reset")
    def on_reset(
        dbapi_connection: Any, record: ConnectionPoolEntry, state: PoolResetState
    ) -> None:
        if not state.terminate_only and not refuse_foreign(record):
            check_in(dbapi_connection, record)
            if pool_logger.isEnabledFor(logging.DEBUG):
                pool_logger.debug("checked in a connection of %r", alias)
