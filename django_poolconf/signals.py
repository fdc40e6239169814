"""The pools' signals, and how they are sent: :data:`pool_exhausted`, :data:`connection_invalidated`.

Receivers run after the pool's lock is released (a receiver may call back into the
pool), and :func:`send` logs a receiver's exception instead of raising it into the
pool. :class:`Invalidation` carries the reason a connection was closed as unusable,
in words that are safe to log and to send.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from django.dispatch import Signal
from sqlalchemy.exc import DisconnectionError

__all__ = [
    "Invalidation",
    "connection_invalidated",
    "describe",
    "physical_connection_created",
    "pool_exhausted",
    "send",
]

# The pool's logger: a receiver's failure is the pool's event, and is logged with it.
logger = logging.getLogger("django_poolconf.pool")

#: Sent when a checkout timed out: ``alias``, ``timeout`` (seconds), ``stats``.
pool_exhausted: Final = Signal()
#: Sent when a pooled connection is closed as unusable: ``alias``, ``reason``.
connection_invalidated: Final = Signal()
#: Sent by the pooled backend once per physical connection, after Django's setup and
#: before ``connection_created``, with Django's arguments: ``sender`` (the wrapper's
#: class) and ``connection`` (the wrapper). What its receivers set in the session is
#: kept for every borrower of that connection (each reset restores it), so setup
#: that does not change per request costs no round trip per request.
physical_connection_created: Final = Signal()


def send(signal: Signal, **kwargs: Any) -> None:
    """Send ``signal``; a receiver's exception is logged, never raised into the pool."""
    for _receiver, result in signal.send_robust(sender=None, **kwargs):
        if isinstance(result, Exception):
            logger.error(
                "a receiver of a django_poolconf signal raised %s",
                type(result).__name__,
                exc_info=result,
            )


class Invalidation(Exception):
    """Why the pool closed a connection as unusable; its text is safe to log."""

    def __init__(self, reason: str, *, quiet: bool = False) -> None:
        super().__init__(reason)
        self.quiet = quiet  # an expected close, logged at DEBUG


def describe(error: BaseException | None) -> str:
    """A reason for an invalidation that carries no server detail."""
    if error is None:
        return "invalidated"
    # Raised by this package's checks, with its own text.
    if isinstance(error, Invalidation | DisconnectionError) and str(error):
        return str(error)
    # A driver's message may name the server: only its class goes to the log.
    return type(error).__name__
