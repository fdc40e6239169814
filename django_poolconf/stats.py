"""Pool statistics: each pool's running :class:`Counters` and their :class:`PoolStats` snapshot.

Every pool keeps a :class:`Counters` object, updated by the pool's state as a
checkout or a return changes it (under the same lock) and by SQLAlchemy pool events
for the rest (connections opened, closed, invalidated). :func:`snapshot` turns it
and the pool's instant numbers into a frozen :class:`PoolStats`, whose field names
are the documented keys of the JSON, the command and the metrics.

This module imports nothing of the package: the pool, health and metrics build on it.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

__all__ = ["BUCKETS", "Counters", "PoolStats", "cumulative_buckets", "snapshot"]

#: Upper bounds, in seconds, of the checkout-wait and hold-time histograms.
BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Counters:
    """One pool's running totals since it was created.

    Updated under :attr:`lock`, which the pool's state shares (see
    :class:`~django_poolconf.pool.state.PoolState`): a checkout or a return counts
    in the same hold of the lock as it changes the pool. The ``add_*`` methods are
    for a caller that holds the lock already; the others take it.
    """

    __slots__ = (
        "checkout_refusals",
        "checkout_timeouts",
        "checkouts",
        "connections_closed",
        "connections_invalidated",
        "connections_opened",
        "hold_buckets",
        "hold_max",
        "hold_total",
        "lock",
        "pre_ping_failures",
        "pre_pings",
        "recycled",
        "wait_buckets",
        "wait_max",
        "wait_total",
    )

    def __init__(self, lock: threading.RLock | None = None) -> None:
        self.reset(lock)

    def reset(self, lock: threading.RLock | None = None) -> None:
        """Start from zero, under ``lock`` or a new one (also in a forked child)."""
        # Reentrant: the garbage collector may return a SQLAlchemy connection, and
        # so count it, in a thread that is counting already.
        self.lock = threading.RLock() if lock is None else lock
        self.connections_opened = 0
        self.connections_closed = 0
        self.connections_invalidated = 0
        self.checkouts = 0
        self.checkout_timeouts = 0
        self.checkout_refusals = 0
        self.recycled = 0
        self.pre_pings = 0
        self.pre_ping_failures = 0
        self.wait_total = 0.0
        self.wait_max = 0.0
        self.hold_total = 0.0
        self.hold_max = 0.0
        # One count per bucket of BUCKETS, and one for larger values.
        self.wait_buckets = [0] * (len(BUCKETS) + 1)
        self.hold_buckets = [0] * (len(BUCKETS) + 1)

    def checked_out(self, waited: float) -> None:
        """Count a checkout that waited ``waited`` seconds for its connection."""
        with self.lock:
            self.add_checkout(waited)

    def add_checkout(self, waited: float) -> None:
        """:meth:`checked_out`, for a caller that holds :attr:`lock`."""
        self.checkouts += 1
        self.wait_total += waited
        if waited > self.wait_max:
            self.wait_max = waited
        self.wait_buckets[bisect.bisect_left(BUCKETS, waited)] += 1

    def checked_in(self, held: float) -> None:
        """Count the return of a connection held ``held`` seconds."""
        with self.lock:
            self.add_checkin(held)

    def add_checkin(self, held: float) -> None:
        """:meth:`checked_in`, for a caller that holds :attr:`lock`."""
        self.hold_total += held
        if held > self.hold_max:
            self.hold_max = held
        self.hold_buckets[bisect.bisect_left(BUCKETS, held)] += 1

    def add(self, name: str) -> None:
        """Add one to the counter ``name`` (off the checkout path)."""
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of one alias's pool.

    Instant values: ``pool_size``, ``checked_in`` (idle connections), ``checked_out``,
    ``overflow`` (connections open beyond ``pool_size``; negative while fewer than
    ``pool_size`` are open, as in SQLAlchemy), ``capacity`` (``pool_size +
    max_overflow``) and ``waiting`` (threads waiting for a connection now).

    Counters since the pool was created: ``connections_opened``,
    ``connections_closed``, ``connections_invalidated``, ``checkouts``,
    ``checkout_timeouts``, ``checkout_refusals`` (failed at once: ``max_waiting``
    checkouts waited already), ``recycled`` (closed for age, ``pool_recycle``),
    ``pre_pings`` and ``pre_ping_failures``.

    Timings in milliseconds: ``wait_ms_total`` and ``wait_ms_max`` (waiting for a
    connection), ``hold_ms_total`` and ``hold_ms_max`` (from checkout to return).
    """

    alias: str
    role: str  # "primary" or "replica"
    pool_size: int
    checked_in: int
    checked_out: int
    overflow: int
    capacity: int
    waiting: int
    connections_opened: int
    connections_closed: int
    connections_invalidated: int
    checkouts: int
    checkout_timeouts: int
    checkout_refusals: int
    recycled: int
    pre_pings: int
    pre_ping_failures: int
    wait_ms_total: float
    wait_ms_max: float
    hold_ms_total: float
    hold_ms_max: float

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a JSON-ready dict, with the documented keys."""
        return asdict(self)


def snapshot(
    alias: str,
    role: str,
    counters: Counters,
    *,
    pool_size: int,
    checked_in: int,
    checked_out: int,
    overflow: int,
    capacity: int,
    waiting: int,
) -> PoolStats:
    """A pool's instant numbers and its counters, as a :class:`PoolStats`."""
    with counters.lock:
        totals = (
            counters.connections_opened,
            counters.connections_closed,
            counters.connections_invalidated,
            counters.checkouts,
            counters.checkout_timeouts,
            counters.checkout_refusals,
            counters.recycled,
            counters.pre_pings,
            counters.pre_ping_failures,
            counters.wait_total * 1000,
            counters.wait_max * 1000,
            counters.hold_total * 1000,
            counters.hold_max * 1000,
        )
    return PoolStats(
        alias,
        role,
        pool_size,
        checked_in,
        checked_out,
        overflow,
        capacity,
        waiting,
        *totals,
    )


def cumulative_buckets(counts: Sequence[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (one per :data:`BUCKETS`, then one for larger values) as
    Prometheus' cumulative ``le`` buckets: ``[("0.001", n), ..., ("+Inf", total)]``.
    """
    result: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*BUCKETS, float("inf")), counts, strict=True):
        running += count
        result.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return result
