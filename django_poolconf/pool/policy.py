"""The checks a pooled connection passes on its way out and in, and what they count.

:meth:`CheckPolicy.check_out` makes sure a connection about to be lent works, at a round
trip's cost only when needed; :meth:`CheckPolicy.check_in` resets a returned one for the
next borrower. Django's checkouts reach them through the
:class:`~django_poolconf.pool.lender.Lender` (a subclass), SQLAlchemy code's through the
pool's listeners.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import exc
from sqlalchemy.pool import ConnectionPoolEntry

from django_poolconf import leaks
from django_poolconf.conf.pool import PoolSettings
from django_poolconf.errors import PoolClosed, TooManyRequests
from django_poolconf.leaks import Held
from django_poolconf.pool import sqla
from django_poolconf.pool.hooks import (
    INFO_BORROWED_AT,
    INFO_FRESH,
    INFO_HELD,
    INFO_NEW,
    INFO_RETURNED_AT,
    ConnectionHooks,
)
from django_poolconf.pool.state import Life
from django_poolconf.signals import Invalidation
from django_poolconf.stats import Counters

__all__ = ["CheckPolicy"]


class CheckPolicy:
    """One pool's checkout and checkin checks, with its settings and counters."""

    __slots__ = (
        "alias",
        "counters",
        "hooks",
        "leak_threshold",
        "life",
        "policy",
        "pre_ping",
        "settings",
        "slow_checkout",
        "threshold",
        "validation_timeout",
    )

    def __init__(
        self, settings: PoolSettings, hooks: ConnectionHooks, life: Life
    ) -> None:
        self.settings = settings
        self.alias = settings.alias
        self.hooks = hooks
        self.life = life
        self.counters = Counters()
        self.leak_threshold = settings.leak_detection_threshold
        self.slow_checkout = (
            None
            if settings.slow_checkout_ms is None
            else settings.slow_checkout_ms / 1000
        )
        self.policy = settings.reset_policy
        self.pre_ping = settings.pool_pre_ping
        self.threshold = settings.pre_ping_threshold
        self.validation_timeout = settings.validation_timeout

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
        self.reset_returned(dbapi_connection, record)

    def reset_returned(
        self, dbapi_connection: Any, record: ConnectionPoolEntry
    ) -> None:
        """:meth:`check_in` without the counting: reset the connection (close it, if its pool was disposed of or drained)."""
        life = self.life
        if life.retired:
            # Borrowed before the pool was disposed: close it, do not keep it.
            record.invalidate(Invalidation("its pool was disposed of", quiet=True))
            return
        if life.drained_at and sqla.opened_by(record, life.drained_at):
            # Borrowed through a drain: its borrower is done, nobody else gets it.
            record.invalidate(Invalidation("its pool was drained", quiet=True))
            return
        info = record.info
        if self.hooks.reset(dbapi_connection, self.policy):
            # The session is as new again: Django must initialize it once more.
            info[INFO_NEW] = True
        info[INFO_RETURNED_AT] = time.monotonic()

    def note_returned(self, record: ConnectionPoolEntry) -> None:
        """Count the hold time of a returned connection and end its leak watch."""
        held = self.end_loan(record)
        if held is not None:
            self.counters.checked_in(held)

    def end_loan(self, record: ConnectionPoolEntry) -> float | None:
        """End a returned connection's leak watch; return how long it was held (None if not lent)."""
        info = record.info
        held = info.pop(INFO_HELD, None)
        if held is not None:
            leaks.LEAKS.release(held)
        borrowed_at = info.pop(INFO_BORROWED_AT, None)
        return None if borrowed_at is None else time.monotonic() - borrowed_at

    def watch(self, record: ConnectionPoolEntry, skip: int) -> None:
        """Watch a connection just checked out for a leak (``leak_detection_threshold``)."""
        assert self.leak_threshold is not None
        held = Held(self.alias, self.leak_threshold, skip=skip + 1)
        record.info[INFO_HELD] = held
        leaks.LEAKS.watch(held, self.leak_threshold)

    def _closed(self) -> PoolClosed:
        """The error of a checkout from a disposed pool."""
        return PoolClosed(
            f"This engine of {self.alias!r} was disposed (its connection "
            "parameters changed, or dispose_all() ran). Call get_engine() again."
        )

    def _refused(self) -> TooManyRequests:
        """The error of a checkout refused a place in line (``max_waiting``); counted."""
        self.counters.add("checkout_refusals")
        settings = self.settings
        waiting = settings.max_waiting
        return TooManyRequests(
            f"No connection for {self.alias!r}: {waiting} "
            f"{'checkout waits' if waiting == 1 else 'checkouts wait'} already "
            f"(max_waiting={waiting}, pool_size={settings.pool_size}, "
            f"max_overflow={settings.max_overflow})."
        )
