"""The engine registry: one SQLAlchemy :class:`~sqlalchemy.engine.Engine` per alias per process.

Django's connection for an alias and every :func:`get_engine` user share the engine's
pool, so a process never opens more than ``pool_size + max_overflow`` connections per
alias. Engines are built lazily, from Django's own connection parameters, by the
alias's backend; this module only keeps them, keeps them apart across ``fork()`` and
disposes of them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS

from django_poolconf import compat, leaks, process, stats
from django_poolconf.conf.pool import PoolSettings
from django_poolconf.pool.drain import drain_lender
from django_poolconf.pool.hooks import ConnectionHooks
from django_poolconf.pool.lender import Lender
from django_poolconf.pool.listeners import listen
from django_poolconf.pool.orphans import ORPHANS, REAPER, return_orphans
from django_poolconf.pool.sqla import LendingPool
from django_poolconf.pool.state import Life
from django_poolconf.stats import PoolStats

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "all_stats",
    "dispose",
    "dispose_all",
    "drain",
    "get_async_engine",
    "get_engine",
    "histogram_of",
    "get_lender",
    "lender_of",
    "stats_of",
]

# The logger these messages always went to (documented), from before the pool package.
logger = logging.getLogger("django_poolconf.engines")


@dataclass
class _Registered:
    lender: Lender
    engine: Engine
    fingerprint: Hashable
    settings: PoolSettings
    hooks: ConnectionHooks
    pid: int
    life: Life
    async_engine: AsyncEngine | None = None


_lock = threading.Lock()
_registry: dict[str, _Registered] = {}


def get_engine(alias: str = DEFAULT_DB_ALIAS) -> Engine:
    """Return the SQLAlchemy engine whose pool Django's connection for ``alias`` uses.

    Use it for SQLAlchemy Core or ORM work that should share Django's connection
    budget: ``with get_engine().begin() as conn: ...``. Do not call ``dispose()`` on
    it; use :func:`dispose_all`.

    :raises ImproperlyConfigured: if ``alias`` is not in ``DATABASES`` or does not use
        a django-poolconf backend.
    """
    engine: Engine = _pooled_wrapper(alias).pooled_engine()
    return engine


def get_async_engine(alias: str = DEFAULT_DB_ALIAS) -> AsyncEngine:
    """Return a SQLAlchemy :class:`~sqlalchemy.ext.asyncio.AsyncEngine` for ``alias``.

    It is built once per process from the same validated pool options and connection
    parameters as :func:`get_engine`, on psycopg's async driver. An async driver
    connection cannot serve Django's synchronous ORM, so this engine has a pool of its
    own: count its capacity in the alias's connection budget.

    :raises ImproperlyConfigured: as :func:`get_engine` does.
    """
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = get_engine(alias)
    with _lock:
        entry = _registry[alias]
        if entry.engine is not engine:  # pragma: no cover - a concurrent rebuild
            raise ImproperlyConfigured(f"The pool of {alias!r} was rebuilt; try again.")
        created = entry.async_engine is None
        if entry.async_engine is None:
            settings = entry.settings
            entry.async_engine = create_async_engine(
                "postgresql+psycopg://",
                async_creator=entry.hooks.async_connect,
                pool_size=settings.pool_size,
                max_overflow=settings.max_overflow,
                pool_timeout=settings.pool_timeout,
                pool_recycle=-1
                if settings.pool_recycle is None
                else settings.pool_recycle,
                pool_pre_ping=settings.pool_pre_ping,
                pool_use_lifo=True,
                hide_parameters=True,
            )
        async_engine = entry.async_engine
    if created:  # logged outside the lock: a log handler may call back in
        logger.info(
            "created async pool for %r (pool_size=%d, max_overflow=%d)",
            alias,
            entry.settings.pool_size,
            entry.settings.max_overflow,
        )
    return async_engine


def _pooled_wrapper(alias: str) -> Any:
    from django.db import connections
    from django.utils.connection import ConnectionDoesNotExist

    try:
        wrapper = connections[alias]
    except ConnectionDoesNotExist:
        raise ImproperlyConfigured(f"DATABASES has no alias {alias!r}.") from None
    if not hasattr(wrapper, "pooled_engine"):
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]['ENGINE'] is {wrapper.settings_dict['ENGINE']!r}, "
            "not a django-poolconf backend. Set it to "
            "'django_poolconf.backends.postgresql'."
        )
    return wrapper


def get_lender(
    alias: str,
    fingerprint: Hashable,
    settings: PoolSettings,
    hooks_factory: Callable[[], ConnectionHooks],
) -> Lender:
    """Return the lender of the alias's engine, building the engine when missing or when its parameters changed.

    Backends call this on every connect; the fast path is one dict lookup and one
    comparison. A changed ``fingerprint`` (as when the test runner renames the
    database) disposes of the old engine and builds a new one.
    """
    entry = _registry.get(alias)
    # Comparing with os.getpid() here, not only in the fork hook, also catches a
    # fork that bypassed Python's hooks; it costs one system call per checkout.
    if (
        entry is not None
        # The same object, in the steady state: no element-wise comparison.
        and (entry.fingerprint is fingerprint or entry.fingerprint == fingerprint)
        and entry.pid == os.getpid()
    ):
        return entry.lender
    replaced = None
    with _lock:
        entry = _registry.get(alias)
        if entry is not None and entry.pid != os.getpid():
            # A fork that os.register_at_fork did not see (e.g. a C extension's).
            _abandon_inherited(entry)
        if entry is not None and entry.fingerprint == fingerprint:
            return entry.lender
        replaced = entry
        hooks = hooks_factory()
        life = Life()
        lender = _build_engine(alias, settings, hooks, life)
        _registry[alias] = _Registered(
            lender, lender.engine, fingerprint, settings, hooks, os.getpid(), life
        )
    # Outside the lock: closing connections sends signals and logs, and a receiver
    # or a log handler may call back into the registry.
    if replaced is not None:
        logger.info("connection parameters of %r changed; replacing its pool", alias)
        _dispose_entry(alias, replaced)
    logger.info(
        "created pool for %r (pool_size=%d, max_overflow=%d)",
        alias,
        settings.pool_size,
        settings.max_overflow,
    )
    return lender


def dispose(alias: str) -> None:
    """Close the idle connections of ``alias``'s pool and forget the engine.

    Connections still checked out are closed when they are returned. The next connect
    builds a fresh engine. Call it before a database is dropped or used as a template.
    """
    with _lock:
        entry = _registry.pop(alias, None)
    # Closed outside the lock: closing sends signals and logs, and their receivers
    # and handlers may call back into the registry (pool_stats(), get_engine()).
    if entry is not None:
        _dispose_entry(alias, entry)


def dispose_all() -> None:
    """Dispose of every pool of this process, as at interpreter exit."""
    with _lock:
        entries = list(_registry.items())
        _registry.clear()
    for alias, entry in entries:  # outside the lock, as in dispose()
        _dispose_entry(alias, entry)


def drain(alias: str = DEFAULT_DB_ALIAS) -> None:
    """Replace every connection of ``alias``'s pool in this process, gracefully.

    Idle and parked connections are closed now; a connection borrowed now stays
    with its borrower, whose transaction is not interrupted, and is closed when it
    is returned, never lent again. The pool keeps lending: later checkouts get new
    connections, opened with the connection parameters of now (a rotated password
    from a callable ``PASSWORD``, say). Unlike :func:`dispose`, the engine stays
    valid and its counters go on. A process that has no pool for ``alias`` yet has
    nothing to drain. The pool of :func:`get_async_engine` is replaced too: its
    idle connections are closed (from a thread without a running event loop), and
    its borrowed ones are dropped with its old pool when returned.

    :raises ImproperlyConfigured: if ``alias`` is not in ``DATABASES`` or does not use
        a django-poolconf backend.
    """
    _pooled_wrapper(alias)
    entry = _registry.get(alias)
    if entry is None or entry.pid != os.getpid():
        return
    # Outside the registry's lock: closing connections logs and sends signals.
    closed = drain_lender(entry.lender)
    if entry.async_engine is not None:
        _dispose_async(entry.async_engine)
    logger.info(
        "drained pool for %r: closed %d idle connections; borrowed ones close "
        "when returned",
        alias,
        closed,
    )


def _dispose_entry(alias: str, entry: _Registered) -> None:
    if entry.pid != os.getpid():
        _abandon_inherited(entry)
        return
    # Retire the engine: connections still checked out are closed when returned,
    # and the engine itself refuses new checkouts (PoolClosed).
    entry.life.retired = True
    entry.engine.dispose()  # closes idle and parked connections (LendingPool.dispose)
    # What borrowers left for a checkout or the reaper to return: orphans, and
    # connections of ended threads. Returned to a retired pool, they are closed now,
    # not a second later, when the database may be being dropped.
    if ORPHANS:
        return_orphans()
    entry.lender.reap()
    if entry.async_engine is not None:
        _dispose_async(entry.async_engine)
    logger.info("disposed pool for %r", alias)


def _dispose_async(engine: AsyncEngine) -> None:
    """Close an async pool's idle connections from synchronous code."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: run one for the closing
        asyncio.run(engine.dispose())
    else:
        # Inside a running loop, nothing here may wait: drop the connections and
        # let the garbage collector close them.
        engine.sync_engine.dispose(close=False)


def _build_engine(
    alias: str, settings: PoolSettings, hooks: ConnectionHooks, life: Life
) -> Lender:
    # psycopg's dialect would register hstore adapters on each connection; other
    # dialects refuse the option.
    dialect_options = (
        {"use_native_hstore": False}
        if hooks.dialect_url.startswith("postgresql")
        else {}
    )
    engine = sqlalchemy.create_engine(
        hooks.dialect_url,
        creator=hooks.connect,
        poolclass=LendingPool,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_recycle=-1 if settings.pool_recycle is None else settings.pool_recycle,
        # The checkout listener pings only when it must; SQLAlchemy's own
        # pre-ping costs a round trip on every checkout and has no deadline.
        pool_pre_ping=False,
        # The reset listener decides how much reset a connection needs.
        pool_reset_on_return=None,
        hide_parameters=True,
        **dialect_options,
    )
    compat.check_internals(engine)  # once per process: what the pool relies on
    lender = Lender(engine, settings, hooks, life)
    engine.pool.lender = lender  # type: ignore[attr-defined]
    listen(lender)
    return lender


def lender_of(alias: str) -> Lender | None:
    """The lender of the pool this process built for ``alias``, or None; never builds one."""
    entry = _registry.get(alias)
    if entry is None or entry.pid != os.getpid():
        return None
    return entry.lender


def stats_of(alias: str) -> PoolStats | None:
    """A snapshot of ``alias``'s pool in this process, or None if it has none."""
    lender = lender_of(alias)
    return None if lender is None else lender.stats()


def histogram_of(alias: str, kind: str) -> tuple[list[int], float]:
    """The per-bucket counts and the sum (seconds) of ``kind``: "wait" or "hold".

    One count per :data:`~django_poolconf.stats.BUCKETS` bound, then one for
    larger values; :mod:`django_poolconf.metrics` makes them Prometheus buckets.
    """
    entry = _registry.get(alias)
    if entry is None:
        return [0] * (len(stats.BUCKETS) + 1), 0.0
    counters = entry.lender.counters
    with counters.lock:
        counts = list(getattr(counters, f"{kind}_buckets"))
        total = getattr(counters, f"{kind}_total")
    return counts, total


def all_stats() -> dict[str, PoolStats]:
    """Snapshots of every pool this process has built, by alias."""
    return {
        alias: entry.lender.stats()
        for alias, entry in list(_registry.items())
        if entry.pid == os.getpid()
    }


# -- processes ----------------------------------------------------------------


def _abandon_inherited(entry: _Registered) -> None:
    """Drop a pool inherited across fork() without touching its sockets.

    Closing the parent's connections from the child would end the parent's sessions,
    so the child only forgets them; psycopg does not close a connection that another
    process opened when it is garbage-collected.
    """
    entry.engine.dispose(close=False)
    if entry.async_engine is not None:
        entry.async_engine.sync_engine.dispose(close=False)
    entry.lender.forget_fork_state()
    entry.pid = os.getpid()


def _after_fork_in_child() -> None:
    global _lock
    # Another thread of the parent may have held the lock at fork time.
    _lock = threading.Lock()
    leaks.LEAKS.forget_fork_state()
    REAPER.forget_fork_state()
    for entry in list(_registry.values()):
        _abandon_inherited(entry)
    pid = os.getpid()
    for lender in REAPER.all():  # disposed engines' too: their loans are the parent's
        if lender.pid != pid:
            lender.forget_fork_state()
    # Last: a collection during this hook may have queued some of the parent's.
    ORPHANS.clear()
    from django.db import connections

    try:
        wrappers = connections.all(initialized_only=True)
    except ImproperlyConfigured:  # settings not configured: no Django connection
        return
    # The forking thread's Django connections may hold a checked-out connection of
    # the parent: forget it, so the child opens its own.
    for wrapper in wrappers:
        forget = getattr(wrapper, "forget_inherited_connection", None)
        if forget is not None:
            forget()


process.on_fork(process.POOLS, _after_fork_in_child)
process.on_exit(process.POOLS, dispose_all)
