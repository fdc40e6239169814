"""Which process owns a pooled connection, and what becomes of a parent's in a forked child.

Ownership is stamped when a connection is opened (:func:`stamp`, from the ``connect``
listener), never when it is returned, so every return path can refuse a connection
whichever thread, finalizer or garbage collection in a forked child hands it back.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from django_poolconf.pool.hooks import INFO_PID

if TYPE_CHECKING:
    from sqlalchemy.pool import ConnectionPoolEntry

__all__ = ["INHERITED", "refuse_foreign", "stamp"]

#: Connections a forked child inherited checked out: kept, never used or closed.
INHERITED: list[object] = []


def stamp(record: ConnectionPoolEntry) -> None:
    """Record that this process opened ``record``: it owns it."""
    record.info[INFO_PID] = os.getpid()


def refuse_foreign(record: ConnectionPoolEntry) -> bool:
    """Whether another process opened ``record``: then keep it referenced, untouched.

    A parent's socket must see nothing from the child: no reset, no close, no other
    borrower. A record with no stamp holds no connection: SQLAlchemy clears ``info``
    before it reconnects, and a failed reconnect leaves it so. It is nobody's to
    keep: its place in the pool goes back.
    """
    owner = record.info.get(INFO_PID)
    if owner is None or owner == os.getpid():
        return False
    INHERITED.append(record)
    return True
