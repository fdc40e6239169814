"""What is known about each replica: its circuit breaker, its lag, its replayed WAL position.

The router reads this on every read; the health view and ``poolstatus`` read a frozen
snapshot, :func:`replica_states`. Neither imports the other.

A replica's breaker is *closed* while the replica works. A failed connection or a
lost one opens it: the router skips the replica for ``BACKOFF`` seconds (doubled
after each failed probe, up to ``MAX_BACKOFF``, with 10 % jitter), and its reads go
to the primary. Then a background thread probes it (*half-open*) through its own
pool: an answer closes the breaker, a failure opens it again.

The same thread measures a replica's replay lag and replayed WAL position, at most
once per ``CHECK_INTERVAL`` and only while the router asks for them. No read waits
for a measurement: the router uses the last one.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from django_poolconf import conf, process
from django_poolconf.backends.mysql import replication as mysql_replication
from django_poolconf.backends.postgresql import replication as postgresql_replication
from django_poolconf.errors import PoolError

__all__ = [
    "BreakerState",
    "ReplicaState",
    "describe_error",
    "replica_states",
    "reset",
]

# The name the module had before routing/ became a package: LOGGING configurations name it.
logger = logging.getLogger("django_poolconf.replicas")

BreakerState = Literal["closed", "open", "half_open"]
CLOSED: Final = "closed"  # the replica serves reads
OPEN: Final = "open"  # skipped until its probe is due
HALF_OPEN: Final = "half_open"  # being probed; still skipped

#: Each back-off is drawn from +/- this fraction around its nominal value, so that
#: the processes of a fleet do not all probe a recovering replica at once.
BACKOFF_JITTER: Final = 0.1
#: A lag measured longer ago than this many check intervals is not trusted.
STALE_INTERVALS: Final = 3

# What a replica's lag is, by vendor: one reading and one definition, shared with
# /health/db. Each reads (in_recovery, read_only, position, lag) on a cursor.
_READ_STATUS: Final[Mapping[str, Callable[[Any], tuple[Any, Any, Any, Any]]]] = {
    "postgresql": postgresql_replication.read_status,
    "mysql": mysql_replication.read_status,
}

# The insert position, not pg_current_wal_lsn() (the write position): with
# synchronous_commit=off a committed transaction's WAL may still sit in the WAL
# buffers, behind the write position; it is always behind the insert position.
_POSITION_SQL: Final[Mapping[str, str]] = {
    "postgresql": "SELECT pg_current_wal_insert_lsn()::text",
}


@dataclass(frozen=True, kw_only=True)
class ReplicaState:
    """What this process knows about one replica, at one moment.

    Durations are seconds. A field is ``None`` while it is unknown: lag and WAL
    position are only measured while the router needs them (``MAX_REPLICA_LAG`` or
    ``CAUSAL``), or when a probe of an unreachable replica succeeds.
    """

    alias: str
    primary: str
    breaker: BreakerState
    failures: int  # consecutive failed connections or probes
    retry_in_s: float | None  # until the next probe, while the breaker is open
    last_error: str | None  # why the breaker opened; no host, port or password
    in_recovery: bool | None  # False: the server is not (or no longer) a replica
    lag_s: float | None  # replay lag at the last measurement
    replayed_lsn: str | None  # WAL position replayed at the last measurement
    measured_s_ago: float | None  # age of the last measurement


class _Replica:
    """The mutable state of one replica; written under ``_cond``, read without."""

    __slots__ = (
        "alias",
        "breaker",
        "failures",
        "retry_at",
        "last_error",
        "in_recovery",
        "lag",
        "replayed_lsn",
        "measured_at",
        "requested",
    )

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.breaker: BreakerState = CLOSED
        self.failures = 0
        self.retry_at = 0.0  # monotonic
        self.last_error: str | None = None
        self.in_recovery: bool | None = None
        self.lag: float | None = None
        self.replayed_lsn: int | None = None
        self.measured_at: float | None = None  # monotonic
        self.requested = False  # the router wants a new measurement


_lock = threading.Lock()
_cond = threading.Condition(_lock)
_replicas: dict[str, _Replica] = {}
_monitor: threading.Thread | None = None
_generation = 0  # bumped to stop the monitor thread


def _replica(alias: str) -> _Replica:
    replica = _replicas.get(alias)
    if replica is None:
        with _lock:
            replica = _replicas.setdefault(alias, _Replica(alias))
    return replica


# -- read by the router, on every read ------------------------------------------


def is_closed(alias: str) -> bool:
    """Whether the replica's breaker is closed: no failure since it was last reachable."""
    replica = _replicas.get(alias)
    return replica is None or replica.breaker == CLOSED


def lag_within(alias: str, max_lag: float, interval: float) -> bool:
    """Whether the replica's last measured lag is at most ``max_lag`` seconds.

    Asks for a new measurement when the last one is ``interval`` seconds old; one
    older than :data:`STALE_INTERVALS` intervals, or none, counts as too far behind.
    """
    replica = _replica(alias)
    measured_at = replica.measured_at
    age = None if measured_at is None else time.monotonic() - measured_at
    if age is None or age >= interval:
        _request(replica)
    if age is None or age > STALE_INTERVALS * interval:
        return False
    lag = replica.lag
    return lag is not None and lag <= max_lag


def has_replayed(alias: str, position: int) -> bool:
    """Whether the replica had replayed WAL ``position`` at its last measurement.

    When it had not, asks for a new measurement (at most one per check interval).
    A replayed position only grows, so an old measurement errs on the safe side.
    """
    replica = _replica(alias)
    replayed = replica.replayed_lsn
    if replayed is not None and replayed >= position:
        return True
    _request(replica)
    return False


def record_failure(alias: str, error: BaseException) -> None:
    """Open the breaker of a replica whose connection failed or was lost.

    Its reads go to the primary until a probe, due after the back-off, succeeds. A
    breaker already open is left alone: concurrent failures of one outage count once.
    """
    settings = _settings()
    with _cond:
        replica = _replicas.setdefault(alias, _Replica(alias))
        if replica.breaker != CLOSED:
            return
        delay = _open(replica, describe_error(error), settings)
        _start_monitor()
        _cond.notify()
    logger.warning(
        "replica %r failed (%s); its reads go to the primary, and it is probed in %.1f s",
        alias,
        replica.last_error,
        delay,
    )


def _open(replica: _Replica, error: str, settings: conf.RouterSettings) -> float:
    replica.failures += 1
    replica.last_error = error
    replica.breaker = OPEN
    doublings = min(replica.failures - 1, 32)
    delay = min(settings.max_backoff, settings.backoff * 2.0**doublings)
    delay *= random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
    replica.retry_at = time.monotonic() + delay
    return delay


def _settings() -> conf.RouterSettings:
    try:
        return conf.router_settings()
    except ImproperlyConfigured:  # reported by the checks, and raised by the router
        return conf.RouterSettings()


def describe_error(error: BaseException) -> str:
    """What a log line or ``last_error`` may say of a failure: no host, port or password."""
    # Our own messages are redacted; a driver's may name the server, so only its
    # class and SQLSTATE are kept.
    if isinstance(error, PoolError):
        return str(error)
    cause = error.__cause__ or error
    sqlstate = getattr(cause, "sqlstate", None)
    name = type(cause).__name__
    return f"{name} (SQLSTATE {sqlstate})" if sqlstate else name


def _request(replica: _Replica) -> None:
    if replica.requested:
        return
    with _cond:
        replica.requested = True
        _start_monitor()
        _cond.notify()


# -- read by the middleware --------------------------------------------------------


def wal_position(alias: str) -> int | None:
    """The primary's current WAL position, on this thread's connection for ``alias``.

    One round trip. ``None`` for a database this module cannot ask.

    :raises django.db.DatabaseError: when the query fails.
    """
    wrapper = connections[alias]
    sql = _POSITION_SQL.get(wrapper.vendor)
    if sql is None:
        return None
    with wrapper.cursor() as cursor:
        cursor.execute(sql)
        row = cursor.fetchone()
    return None if row is None else parse_lsn(row[0])


def parse_lsn(text: str | None) -> int | None:
    """``"16/B374D848"`` (PostgreSQL's ``pg_lsn``) as a number, comparable with ``<``."""
    if text is None:
        return None
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(position: int) -> str:
    """The inverse of :func:`parse_lsn`."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


# -- read by the health view and poolstatus -----------------------------------------


def replica_states() -> dict[str, ReplicaState]:
    """A snapshot of every pooled replica in ``DATABASES``, by alias.

    Reads no database: a replica the router has not used yet shows a closed breaker
    and no measurement.

    :raises ImproperlyConfigured: on a bad ``REPLICA_OF``.
    """
    topology = conf.topology(connections.settings)
    now = time.monotonic()
    states = {}
    with _lock:
        for alias, primary in topology.primary_of.items():
            replica = _replicas.get(alias) or _Replica(alias)
            measured_at = replica.measured_at
            replayed = replica.replayed_lsn
            states[alias] = ReplicaState(
                alias=alias,
                primary=primary,
                breaker=replica.breaker,
                failures=replica.failures,
                retry_in_s=max(0.0, replica.retry_at - now)
                if replica.breaker == OPEN
                else None,
                last_error=replica.last_error,
                in_recovery=replica.in_recovery,
                lag_s=replica.lag,
                replayed_lsn=None if replayed is None else format_lsn(replayed),
                measured_s_ago=None if measured_at is None else now - measured_at,
            )
    return states


def reset() -> None:
    """Forget every replica's state and stop the background thread.

    For tests, and after the replicas themselves were replaced. The next failure or
    request for a measurement starts the thread again.
    """
    global _generation, _monitor
    with _cond:
        _generation += 1
        _replicas.clear()
        monitor, _monitor = _monitor, None
        _cond.notify_all()
    if monitor is not None and monitor is not threading.current_thread():
        monitor.join(timeout=30)


# -- the background thread ------------------------------------------------------------


def _start_monitor() -> None:
    """Start the thread unless it runs; call with ``_cond`` held."""
    global _monitor
    if _monitor is not None and _monitor.is_alive():
        return
    _monitor = threading.Thread(
        target=_run, args=(_generation,), name="django_poolconf.replicas", daemon=True
    )
    _monitor.start()


def _run(generation: int) -> None:
    while True:
        with _cond:
            if generation != _generation:
                return
            due, wait = _due()
            if not due:
                _cond.wait(wait)
                continue
        for replica in due:
            _check(replica, generation)


def _due() -> tuple[list[_Replica], float | None]:
    """The replicas to probe or measure now, and how long to wait for the next one."""
    interval = _settings().check_interval
    now = time.monotonic()
    due = []
    wait: float | None = None
    for replica in _replicas.values():
        if replica.breaker == OPEN:
            at = replica.retry_at
        elif replica.breaker == CLOSED and replica.requested:
            measured_at = replica.measured_at
            at = now if measured_at is None else measured_at + interval
        else:
            continue
        if at <= now:
            if replica.breaker == OPEN:
                replica.breaker = HALF_OPEN
            due.append(replica)
        else:
            wait = at - now if wait is None else min(wait, at - now)
    return due, wait


def _check(replica: _Replica, generation: int) -> None:
    """Probe or measure one replica, on a connection of its own pool."""
    try:
        in_recovery, replayed, lag = _measure(replica.alias)
    except Exception as error:
        with _cond:
            if generation != _generation:
                return
            replica.requested = False
            was = replica.breaker
            if was == OPEN:
                return  # a failed read opened it meanwhile
            delay = _open(replica, describe_error(error), _settings())
        if was == HALF_OPEN:
            logger.info(
                "replica %r is still unreachable (%s); next probe in %.1f s",
                replica.alias,
                replica.last_error,
                delay,
            )
        else:
            logger.warning(
                "replica %r failed its check (%s); its reads go to the primary, and it "
                "is probed in %.1f s",
                replica.alias,
                replica.last_error,
                delay,
            )
        return
    with _cond:
        if generation != _generation:
            return
        replica.in_recovery = in_recovery
        replica.replayed_lsn = replayed
        replica.lag = lag
        replica.measured_at = time.monotonic()
        replica.requested = False
        recovered = replica.breaker == HALF_OPEN
        if recovered:
            replica.breaker = CLOSED
            replica.failures = 0
            replica.last_error = None
    if recovered:
        logger.info("replica %r answers again; reads return to it", replica.alias)


def _measure(alias: str) -> tuple[bool | None, int | None, float | None]:
    """One round trip on a connection borrowed from the replica's pool, then returned."""
    wrapper = connections[alias]
    try:
        read_status = _READ_STATUS.get(wrapper.vendor)
        with wrapper.cursor() as cursor:
            if read_status is None:
                cursor.execute("SELECT 1")
                return None, None, None
            in_recovery, _, replayed, lag = read_status(cursor)
    finally:
        wrapper.close()
    return in_recovery, parse_lsn(replayed), None if lag is None else float(lag)


def _after_fork_in_child() -> None:
    global _lock, _cond, _monitor
    # The parent's thread does not run in the child, and may have held the lock.
    _lock = threading.Lock()
    _cond = threading.Condition(_lock)
    _monitor = None
    for replica in _replicas.values():
        replica.requested = False
        if replica.breaker == HALF_OPEN:
            replica.breaker = OPEN  # its probe ran in the parent


process.on_fork(process.MONITORS, _after_fork_in_child)
