"""Health checks of every pooled alias: reachability, latency, role, lag and the pool's numbers.

Pure checks returning the frozen dataclasses of :mod:`django_poolconf.health.report`,
with no HTTP in them: the view (:mod:`django_poolconf.views`) and ``manage.py
poolstatus`` are thin faces over :func:`check_health`.

Each alias is probed in a thread of its own, all at once, and the caller waits at
most ``POOLCONF["HEALTH"]["TIMEOUT"]`` for all of them: a server that hangs is
reported as ``timeout`` when the time is up, while its probe finishes (and closes
what it opened) in the background. One probe per alias runs at a time; callers that
come meanwhile wait for it, and its result serves for ``CACHE`` seconds. The pool's
numbers are read afresh on every call: they cost no round trip.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from concurrent.futures import Future, wait
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from django_poolconf import process
from django_poolconf.backends.probes import ProbeResult
from django_poolconf.conf.health import HealthSettings, health_settings
from django_poolconf.conf.pool import PoolSettings
from django_poolconf.conf.router import router_settings
from django_poolconf.conf.rules import is_pooled
from django_poolconf.health.report import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    AliasHealth,
    HealthReport,
    Reason,
    Role,
    Status,
    Target,
)
from django_poolconf.pool import registry
from django_poolconf.pool.lender import Lender
from django_poolconf.redaction import SECRET_PARAMS, fingerprint
from django_poolconf.routing import replicas

if TYPE_CHECKING:
    from django_poolconf.backends.postgresql.pgbouncer_admin import PgBouncerView

# PostgreSQL's probes and PgBouncer's console are imported when used: they import
# psycopg, which a project on SQLite or MySQL alone may lack (or find no libpq for).


def _postgresql_probes() -> ModuleType:
    from django_poolconf.backends.postgresql import probes

    return probes


def _admin_view(future: Future[PgBouncerView], settings: PoolSettings) -> PgBouncerView:
    from django_poolconf.health.pgbouncer import admin_view

    return admin_view(future, settings)


__all__ = ["check_health", "pooled_aliases"]

# The name the module had before health/ became a package: LOGGING configurations name it.
logger = logging.getLogger("django_poolconf.health")


def pooled_aliases() -> list[str]:
    """Every alias of ``DATABASES`` that uses a django-poolconf backend, in order."""
    return [alias for alias, s in connections.settings.items() if is_pooled(s)]


def check_health(
    aliases: Iterable[str] | None = None,
    *,
    timeout: float | None = None,
    max_age: float | None = None,
    server_view: bool = False,
    pgbouncer: bool = False,
) -> HealthReport:
    """Check ``aliases`` (default: every pooled alias) at once; return within ``timeout``.

    ``timeout`` defaults to ``POOLCONF["HEALTH"]["TIMEOUT"]``; an alias whose probe
    has not answered by then is reported as ``timeout``. A probe result younger than
    ``max_age`` seconds (default ``POOLCONF["HEALTH"]["CACHE"]``; ``0`` never) is
    reused. ``server_view`` also reads each server's connections and limits (for
    ``poolstatus``), and never reuses an earlier result that lacks them.
    ``pgbouncer`` also reads PgBouncer's admin console for each alias whose
    ``POOL["pgbouncer_admin"]`` names one (never reused).

    No connection of a pool is opened, and none is held past the check: a probe
    borrows a pooled connection only when one is idle, else opens its own and closes it.

    :raises ImproperlyConfigured: when ``POOLCONF["HEALTH"]`` is invalid, or an alias
        is not a pooled one.
    """
    options = health_settings()
    timeout = options.timeout if timeout is None else timeout
    max_age = options.cache if max_age is None else max_age
    names = pooled_aliases() if aliases is None else list(aliases)
    deadline = time.monotonic() + timeout
    checks = [_start(alias, deadline, max_age, server_view) for alias in names]
    if pgbouncer:
        for check in checks:
            if (
                check.settings is not None
                and check.settings.pgbouncer_admin is not None
                and check.target is not None
            ):
                from django_poolconf.health.pgbouncer import start_admin_probe

                check.admin = start_admin_probe(
                    check.alias,
                    check.settings,
                    check.target.dbname,
                    deadline,
                    check.target.user,
                )
    pending: list[Future[Any]] = [c.future for c in checks if c.future is not None]
    pending += [c.admin for c in checks if c.admin is not None]
    if pending:
        wait(pending, timeout=max(0.0, deadline - time.monotonic()))
    results = tuple(_verdict(check, options) for check in checks)
    return HealthReport(status=_overall(results), databases=results, pid=os.getpid())


def _overall(results: Iterable[AliasHealth]) -> Status:
    status: Status = HEALTHY
    for health in results:
        if health.status == UNHEALTHY and health.role == "primary":
            return UNHEALTHY
        if health.status != HEALTHY:
            status = DEGRADED
    return status


# -- one alias ---------------------------------------------------------------------


@dataclass
class _Check:
    alias: str
    role: Role
    numbers: tuple[int, int, int, int]  # pool_size, checked_in, checked_out, overflow
    capacity: int
    settings: PoolSettings | None = None
    target: Target | None = None
    future: Future[ProbeResult] | None = None
    error: str | None = None  # a configuration error: no probe
    admin: Future[PgBouncerView] | None = None  # PgBouncer's admin console


def _start(alias: str, deadline: float, max_age: float, server_view: bool) -> _Check:
    """Read the alias's settings and pool numbers, and start (or join) its probe."""
    wrapper: Any = connections[alias]
    if not getattr(wrapper, "is_pooled", False):
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}] does not use a django-poolconf backend, so it has "
            "no pool to check."
        )
    settings_dict = connections.settings[alias]
    role: Role = "replica" if settings_dict.get("REPLICA_OF") else "primary"
    try:
        settings: PoolSettings = wrapper.get_pool_settings()
        params: dict[str, Any] = wrapper.get_connection_params()
    except ImproperlyConfigured as error:
        # Configuration messages name keys and values, never the password.
        return _Check(alias, role, (0, 0, 0, 0), 0, error=str(error))
    lender, numbers = _pool_numbers(alias, settings)
    check = _Check(
        alias,
        role,
        numbers,
        settings.capacity,
        settings,
        Target.from_params(params),
    )
    _, checked_in, checked_out, _ = numbers
    if not (
        lender is not None
        and checked_in > 0
        and checked_out < settings.capacity
        # The server's view leaves the probe's own connection out: not a pooled one.
        and not server_view
        # The parameters changed since the pool was built: not this pool. (As a
        # connect would, this builds the new pool.)
        and wrapper.pooled_engine() is lender.engine
    ):
        # An idle connection costs no connect. If another thread takes it first, the
        # probe opens its own rather than wait for the pool.
        lender = None
    check.future = _probe(
        alias,
        params,
        lender,
        deadline,
        max_age,
        server_view,
        wrapper.credentials_for(params) or None,
        # The vendor's probes (a module with probe_server() and probe_pooled()).
        getattr(wrapper, "health_probes", None) or _postgresql_probes(),
    )
    return check


def _pool_numbers(
    alias: str, settings: PoolSettings
) -> tuple[Lender | None, tuple[int, int, int, int]]:
    lender = registry.lender_of(alias)
    if lender is None:
        # No pool yet in this process: what a new one reports.
        return None, (settings.pool_size, 0, 0, -settings.pool_size)
    pool = lender.engine.pool
    return lender, (pool.size(), pool.checkedin(), pool.checkedout(), pool.overflow())  # type: ignore[attr-defined]


def _verdict(check: _Check, options: HealthSettings) -> AliasHealth:
    pool_size, checked_in, checked_out, overflow = check.numbers
    probe: ProbeResult | None = None
    if check.future is not None and check.future.done():
        probe = check.future.result()
    saturated = check.capacity > 0 and checked_out >= check.capacity
    reason: Reason | None = None
    if check.error is not None:
        reason = "misconfigured"
    elif probe is None:
        # Out of time. Borrowing may have waited for a pool that filled up meanwhile.
        assert check.settings is not None
        now = _pool_numbers(check.alias, check.settings)[1]
        reason = "pool_saturated" if now[2] >= check.capacity else "timeout"
    elif probe.failure is not None:
        reason = probe.failure
    elif check.role == "primary" and (probe.in_recovery or probe.read_only):
        reason = "read_only_primary"
    elif check.role == "replica" and probe.in_recovery is False:
        # Promoted (a failover): it takes writes and replays nothing. Its reads are
        # fresh if the primary alias follows it, stale in a split brain; either
        # way the alias no longer has a replica behind it.
        reason = "replica_promoted"
    elif (
        check.role == "replica"
        and (max_lag := _max_replica_lag(options)) is not None
        and (
            probe.replication_lag_s > max_lag
            if probe.replication_lag_s is not None
            # Unknown on a standby (nothing replayed since it started): too far
            # behind, as the router counts it.
            else bool(probe.in_recovery)
        )
    ):
        reason = "replica_lagging"
    elif saturated:
        reason = "pool_saturated"
    status: Status = HEALTHY
    if reason in {"pool_saturated", "replica_lagging", "replica_promoted"}:
        status = DEGRADED
    elif reason is not None:
        status = UNHEALTHY
    return AliasHealth(
        alias=check.alias,
        status=status,
        role=check.role,
        reason=reason,
        latency_ms=None
        if probe is None or probe.latency_ms is None
        else round(probe.latency_ms, 3),
        pool_size=pool_size,
        checked_in=checked_in,
        checked_out=checked_out,
        overflow=overflow,
        capacity=check.capacity,
        replication_lag_s=None
        if probe is None or probe.replication_lag_s is None
        else round(probe.replication_lag_s, 3),
        breaker=_breaker_state(check.alias) if check.role == "replica" else None,
        stats=registry.stats_of(check.alias),
        error=check.error if probe is None else probe.error,
        target=check.target,
        settings=check.settings,
        server_view=None if probe is None else probe.server,
        pgbouncer=None
        if check.admin is None or check.settings is None
        else _admin_view(check.admin, check.settings),
    )


def _breaker_state(alias: str) -> str | None:
    """The replica's circuit-breaker state, as the router's replica tracking knows it."""
    try:
        state = replicas.replica_states().get(alias)
    except ImproperlyConfigured:  # a bad REPLICA_OF: reported as misconfigured
        return None
    return None if state is None else str(state.breaker)


def _max_replica_lag(options: HealthSettings) -> float | None:
    """HEALTH's MAX_REPLICA_LAG, or else the router's: one bound for both."""
    if options.max_replica_lag is not None:
        return options.max_replica_lag
    try:
        return router_settings().max_replica_lag
    except ImproperlyConfigured:
        return None


# -- probes: one at a time per alias, results reused for CACHE seconds --------------


@dataclass
class _Probe:
    key: Hashable
    server_view: bool
    future: Future[ProbeResult]


_lock = threading.Lock()
_probes: dict[str, _Probe] = {}


def _probe(
    alias: str,
    params: dict[str, Any],
    lender: Lender | None,
    deadline: float,
    max_age: float,
    server_view: bool,
    credentials: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
    probes: Any = None,
) -> Future[ProbeResult]:
    if probes is None:
        probes = _postgresql_probes()
    key = _fingerprint(params)
    with _lock:
        current = _probes.get(alias)
        if (
            current is not None
            and current.key == key
            and (current.server_view or not server_view)
        ):
            future = current.future
            if not future.done():
                return future  # join the probe in flight rather than start another
            result = future.result()
            if (
                time.monotonic() - result.finished_at < max_age
                # Says nothing about the server: the pool was full.
                and result.failure != "pool_saturated"
            ):
                return future
        future = Future()
        _probes[alias] = _Probe(key, server_view, future)
    thread = threading.Thread(
        target=_run_probe,
        args=(
            future,
            alias,
            params,
            lender,
            deadline,
            server_view,
            credentials,
            probes,
        ),
        name=f"django_poolconf health {alias}",
        daemon=True,  # a hung server must not hold up the interpreter's exit
    )
    thread.start()
    return future


def _run_probe(
    future: Future[ProbeResult],
    alias: str,
    params: dict[str, Any],
    lender: Lender | None,
    deadline: float,
    server_view: bool,
    credentials: Callable[[Mapping[str, Any]], dict[str, Any]] | None,
    probes: Any,
) -> None:
    future.set_running_or_notify_cancel()
    try:
        if lender is not None:
            result = probes.probe_pooled(
                lender,
                params,
                deadline,
                server_view=server_view,
                credentials=credentials,
            )
        else:
            result = probes.probe_server(
                params, deadline, server_view=server_view, credentials=credentials
            )
    except Exception as error:
        logger.exception("health probe of %r failed", alias)
        result = ProbeResult(
            finished_at=time.monotonic(),
            failure="unreachable",
            error=f"the probe failed ({type(error).__name__})",
        )
    future.set_result(result)


def _fingerprint(params: Mapping[str, Any]) -> Hashable:
    # The host hashed too: a probe's key is next to what anonymous callers see.
    return fingerprint(params, SECRET_PARAMS | {"host", "hostaddr"})


def _forget_probes() -> None:
    global _lock
    # A child has none of its parent's probe threads, and maybe a lock held by one.
    _lock = threading.Lock()
    _probes.clear()


process.on_fork(process.MONITORS, _forget_probes)
