"""Draining a pool: every connection replaced, gracefully, while the pool lends on.

As psycopg_pool's ``drain()``: the idle and parked connections are closed now; a
borrowed one is left to its borrower, and closed when it is returned instead of
being lent again; a connection opened from then on is a new one. Nothing a borrower
holds is interrupted, and the pool keeps its settings, its counters and its place in
the registry (unlike a dispose). Use it after rotating the database password, so
that no connection made with the old one outlives the rotation, or after a change on
the server that sessions only pick up when they start.
"""

from __future__ import annotations

import time

from django_poolconf.pool import sqla
from django_poolconf.pool.lender import Lender

__all__ = ["drain_lender"]


def drain_lender(lender: Lender) -> int:
    """Replace every connection of ``lender``'s pool; return how many idle ones were closed now.

    A connection opened by now is closed when it is returned (see
    :meth:`~django_poolconf.pool.policy.CheckPolicy.reset_returned`), and replaced
    if anything checks it out first (a return racing with this call).
    """
    now = time.time()
    lender.life.drained_at = now
    sqla.replace_opened_by(lender.engine.pool, now)
    # After the mark: a connection returned from here on is closed, not kept idle.
    return lender.close_idle()
