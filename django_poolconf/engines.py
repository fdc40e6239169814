"""Kept for compatibility: the engine registry and the pool now live in :mod:`django_poolconf.pool`.

``from django_poolconf import engines`` and every ``engines.X`` of before keep working;
new code imports from the module that defines the name:

* :mod:`django_poolconf.pool.registry`: :func:`get_engine`, :func:`get_async_engine`,
  :func:`dispose`, :func:`dispose_all`, :func:`get_lender`, :func:`lender_of`,
  :func:`stats_of`,
  :func:`all_stats`, :func:`histogram_of`;
* :mod:`django_poolconf.pool.lender`: :class:`Lender`;
* :mod:`django_poolconf.pool.hooks`: :class:`ConnectionHooks` and the ``INFO_*`` keys;
* :mod:`django_poolconf.pool.orphans`: :data:`ORPHANS`, :data:`PARKED`, the reaper;
* :mod:`django_poolconf.pool.ownership`: :data:`INHERITED`;
* :mod:`django_poolconf.pool.sqla`: :class:`LendingPool`.

The pool logs pools created and disposed of under the ``django_poolconf.engines``
logger, as before.
"""

from __future__ import annotations

from django_poolconf.pool.hooks import (
    INFO_BORROWED_AT,
    INFO_FRESH,
    INFO_HELD,
    INFO_INVALIDATED,
    INFO_NEW,
    INFO_PID,
    INFO_RETURNED_AT,
    ConnectionHooks,
)
from django_poolconf.pool.lender import Lender
from django_poolconf.pool.listeners import RECYCLE_JITTER
from django_poolconf.pool.orphans import (
    ORPHANS,
    PARKED,
    REAP_INTERVAL_S,
    REAPER,
    return_orphans,
)
from django_poolconf.pool.ownership import INHERITED
from django_poolconf.pool.registry import (
    all_stats,
    dispose,
    dispose_all,
    get_async_engine,
    get_engine,
    get_lender,
    histogram_of,
    lender_of,
    stats_of,
)
from django_poolconf.pool.sqla import LendingPool

__all__ = [
    "INFO_BORROWED_AT",
    "INFO_FRESH",
    "INFO_HELD",
    "INFO_INVALIDATED",
    "INFO_NEW",
    "INFO_PID",
    "INFO_RETURNED_AT",
    "INHERITED",
    "ORPHANS",
    "PARKED",
    "REAPER",
    "REAP_INTERVAL_S",
    "RECYCLE_JITTER",
    "ConnectionHooks",
    "Lender",
    "LendingPool",
    "all_stats",
    "dispose",
    "dispose_all",
    "get_async_engine",
    "get_engine",
    "histogram_of",
    "get_lender",
    "lender_of",
    "stats_of",
]

# Old private names that code outside the package (tests, monitoring) still reads.
_return_orphans = return_orphans
