"""What the pools are doing: kept for compatibility; the code lives in three modules.

* :mod:`django_poolconf.stats`: :class:`Counters`, :class:`PoolStats`, :data:`BUCKETS`;
* :mod:`django_poolconf.signals`: :data:`pool_exhausted`,
  :data:`connection_invalidated`, :class:`Invalidation`;
* :mod:`django_poolconf.leaks`: leak detection, :data:`LEAKS`.

``from django_poolconf import monitoring`` and every ``monitoring.X`` of before keep
working; :func:`pool_stats` and :func:`pool_stats_all` are defined here, as the
registry's readers.

Loggers (none of their messages carries a host, user, password or DSN):

* ``django_poolconf.pool``: connections opened, checked out and in, recycled
  (DEBUG); invalidated (WARNING, with the reason); slow checkouts (WARNING).
* ``django_poolconf.leaks``: a connection held past ``leak_detection_threshold``
  (WARNING, with the stack that borrowed it) and its eventual return (INFO).
* ``django_poolconf.engines``: pools created and disposed of (INFO).
"""

from __future__ import annotations

from django_poolconf.leaks import LEAKS, Held, held_now
from django_poolconf.leaks import logger as leak_logger
from django_poolconf.pool import registry
from django_poolconf.signals import (
    Invalidation,
    connection_invalidated,
    describe,
    logger,
    pool_exhausted,
    send,
)
from django_poolconf.stats import BUCKETS, Counters, PoolStats, snapshot

__all__ = [
    "BUCKETS",
    "LEAKS",
    "Counters",
    "Held",
    "Invalidation",
    "PoolStats",
    "connection_invalidated",
    "describe",
    "held_now",
    "leak_logger",
    "logger",
    "pool_exhausted",
    "pool_stats",
    "pool_stats_all",
    "send",
    "snapshot",
]


def pool_stats(alias: str = "default") -> PoolStats:
    """Return a snapshot of ``alias``'s pool, building the pool if it does not exist yet.

    :raises ImproperlyConfigured: if ``alias`` is not a django-poolconf alias.
    """
    registry.get_engine(alias)
    found = registry.stats_of(alias)
    assert found is not None
    return found


def pool_stats_all() -> dict[str, PoolStats]:
    """Return a snapshot of every pool this process has built, by alias."""
    return registry.all_stats()
