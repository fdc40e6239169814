"""What the pools are doing: statistics, event logs, signals and leak detection.

Every pool keeps a :class:`Counters` object, updated by its
:class:`~django_poolconf.engines.Lender` on the checkout path (a lock, a few additions
and a clock read: see :doc:`/monitoring` for its measured cost) and by SQLAlchemy pool
events for the rest (connections opened, closed, invalidated). :func:`pool_stats`
turns it and the pool's instant numbers into a frozen :class:`PoolStats`.

Loggers (none of their messages carries a host, user, password or DSN):

* ``django_poolconf.pool``: connections opened, checked out and in, recycled
  (DEBUG); invalidated (WARNING, with the reason); slow checkouts (WARNING).
* ``django_poolconf.leaks``: a connection held past ``leak_detection_threshold``
  (WARNING, with the stack that borrowed it) and its eventual return (INFO).
* ``django_poolconf.engines``: pools created and disposed of (INFO).
"""

from __future__ import annotations

import bisect
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

from django.dispatch import Signal

if TYPE_CHECKING:
    from sqlalchemy.pool import QueuePool

__all__ = [
    "BUCKETS",
    "Counters",
    "Invalidation",
    "PoolStats",
    "connection_invalidated",
    "pool_exhausted",
    "pool_stats",
    "pool_stats_all",
]

logger = logging.getLogger("django_poolconf.pool")
leak_logger = logging.getLogger("django_poolconf.leaks")

#: Sent when a checkout timed out: ``alias``, ``timeout`` (seconds), ``stats``.
pool_exhausted: Final = Signal()
#: Sent when a pooled connection is closed as unusable: ``alias``, ``reason``.
connection_invalidated: Final = Signal()

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
    """One pool's running totals since it was created; updated under its lock."""

    __slots__ = (
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

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start from zero, with a new lock (also in a forked child)."""
        # Reentrant: the garbage collector may return a SQLAlchemy connection, and
        # so count it, in a thread that is counting already.
        self.lock = threading.RLock()
        self.connections_opened = 0
        self.connections_closed = 0
        self.connections_invalidated = 0
        self.checkouts = 0
        self.checkout_timeouts = 0
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
            self.checkouts += 1
            self.wait_total += waited
            if waited > self.wait_max:
                self.wait_max = waited
            self.wait_buckets[bisect.bisect_left(BUCKETS, waited)] += 1

    def checked_in(self, held: float) -> None:
        """Count the return of a connection held ``held`` seconds."""
        with self.lock:
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
    ``checkout_timeouts``, ``recycled`` (closed for age, ``pool_recycle``),
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


def send(signal: Signal, **kwargs: Any) -> None:
    """Send ``signal``; a receiver's exception is logged, never raised into the pool."""
    for _receiver, result in signal.send_robust(sender=None, **kwargs):
        if isinstance(result, Exception):
            logger.error(
                "a receiver of a django_poolconf signal raised %s",
                type(result).__name__,
                exc_info=result,
            )


def snapshot(
    alias: str,
    role: str,
    pool: QueuePool,
    capacity: int,
    counters: Counters,
    in_line: int = 0,
) -> PoolStats:
    """Read a pool's instant numbers and its counters into a :class:`PoolStats`."""
    with counters.lock:
        totals = (
            counters.connections_opened,
            counters.connections_closed,
            counters.connections_invalidated,
            counters.checkouts,
            counters.checkout_timeouts,
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
        pool.size(),
        pool.checkedin(),
        pool.checkedout(),
        pool.overflow(),
        capacity,
        _waiting(pool, in_line),
        *totals,
    )


def _waiting(pool: QueuePool, in_line: int) -> int:
    # Waiters, Django's and SQLAlchemy code's, stand in the Lender's line; a pool of
    # another class, or one whose lender is gone, has its waiters in its queue. Both
    # are read from where they wait, so counting them costs the checkout path nothing.
    try:
        in_queue = len(pool._pool.not_empty._waiters)  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - another pool class
        in_queue = 0
    return in_line + max(0, in_queue - (1 if in_line else 0))


def pool_stats(alias: str = "default") -> PoolStats:
    """Return a snapshot of ``alias``'s pool, building the pool if it does not exist yet.

    :raises ImproperlyConfigured: if ``alias`` is not a django-poolconf alias.
    """
    from django_poolconf import engines

    engines.get_engine(alias)
    found = engines.stats_of(alias)
    assert found is not None
    return found


def pool_stats_all() -> dict[str, PoolStats]:
    """Return a snapshot of every pool this process has built, by alias."""
    from django_poolconf import engines

    return engines.all_stats()


class Invalidation(Exception):
    """Why the pool closed a connection as unusable; its text is safe to log."""

    def __init__(self, reason: str, *, quiet: bool = False) -> None:
        super().__init__(reason)
        self.quiet = quiet  # an expected close, logged at DEBUG


def describe(error: BaseException | None) -> str:
    """A reason for an invalidation that carries no server detail."""
    if error is None:
        return "invalidated"
    from sqlalchemy.exc import DisconnectionError

    # Raised by this package's checks, with its own text.
    if isinstance(error, Invalidation | DisconnectionError) and str(error):
        return str(error)
    # A driver's message may name the server: only its class goes to the log.
    return type(error).__name__


# -- leak detection -------------------------------------------------------------


class Held:
    """A connection borrowed with leak detection on: where, when, and whether reported."""

    __slots__ = ("alias", "deadline", "reported", "since", "stack", "where")

    def __init__(self, alias: str, threshold: float, skip: int) -> None:
        self.alias = alias
        self.since = time.monotonic()
        self.deadline = self.since + threshold
        self.reported = False
        frame = sys._getframe(skip + 1)
        # Frames only: source lines are looked up if a warning is ever written.
        self.stack = traceback.StackSummary.extract(
            traceback.walk_stack(frame), limit=40, lookup_lines=False
        )
        self.stack.reverse()
        self.where = _request_of(frame)


def _request_of(frame: Any) -> str:
    """The request path and view of the innermost frame handling an HttpRequest."""
    from django.http import HttpRequest

    while frame is not None:
        request = frame.f_locals.get("request")
        if isinstance(request, HttpRequest):
            match = getattr(request, "resolver_match", None)
            view = (
                match._func_path
                if match is not None
                else f"{frame.f_code.co_filename}:{frame.f_code.co_name}"
            )
            return f" during request {request.path!r} (view {view})"
        frame = frame.f_back
    return ""


class _LeakWatch:
    """One daemon thread per process that reports connections held too long.

    Borrowed connections are few (at most the pools' capacity), so the thread scans
    them all a few times per threshold rather than keeping a timer per checkout.
    """

    def __init__(self) -> None:
        self.forget_fork_state()

    def forget_fork_state(self) -> None:
        """Start empty, with new locks: at import and in a forked child, where the
        parent's watcher thread does not run and its borrowers are not ours."""
        self.lock = threading.Lock()
        self.held: dict[int, Held] = {}
        self.period = 1.0
        self.pid = 0
        self.wake = threading.Event()

    def watch(self, held: Held, threshold: float) -> None:
        with self.lock:
            self.held[id(held)] = held
            period = min(max(threshold / 4, 0.01), 1.0)
            if period < self.period:
                self.period = period
                self.wake.set()
            if self.pid != os.getpid():  # first use, or a forked child
                self.pid = os.getpid()
                threading.Thread(
                    target=self._run, name="django_poolconf-leaks", daemon=True
                ).start()

    def release(self, held: Held) -> None:
        # No lock: the garbage collector may return a connection (and so call this)
        # in a thread that holds it. One dict operation is atomic.
        self.held.pop(id(held), None)
        if held.reported:
            leak_logger.info(
                "the connection of %r reported as possibly leaked was returned "
                "after %.3f s",
                held.alias,
                time.monotonic() - held.since,
            )

    def _run(self) -> None:
        while True:
            self.wake.wait(self.period)
            self.wake.clear()
            # Nothing may end this thread: leak detection would stop for good.
            try:
                self._scan()
            except Exception:
                leak_logger.exception("leak detection failed a scan; it carries on")

    def _scan(self) -> None:
        now = time.monotonic()
        with self.lock:
            # release() pops without the lock: scan a copy (dict.copy() runs no
            # Python code, so no other thread changes the dict meanwhile).
            watched = self.held.copy()
            due = [h for h in watched.values() if not h.reported and h.deadline <= now]
            for held in due:
                held.reported = True
        for held in due:
            try:
                self._report(held, now)
            except Exception:
                leak_logger.exception("could not report a possibly leaked connection")

    @staticmethod
    def _report(held: Held, now: float) -> None:
        stack = "".join(held.stack.format())  # source lines are read only now
        leak_logger.warning(
            "a connection of %r has been held for %.3f s, longer than "
            "leak_detection_threshold%s; it was checked out at:\n%s",
            held.alias,
            now - held.since,
            held.where,
            stack,
        )


LEAKS: Final = _LeakWatch()


def held_now() -> Iterator[Held]:
    """The borrowed connections leak detection is watching (for tests and debugging)."""
    with LEAKS.lock:
        return iter(list(LEAKS.held.values()))
