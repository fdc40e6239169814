"""Read/write splitting: :class:`ReadWriteRouter` and :func:`note_write`.

Writes go to a model's primary; reads go to one of its replicas, chosen once per
request or task and kept for it, unless reading the replica could show stale data:
inside ``transaction.atomic()`` on the primary, after a write in the same request or
task, and after a recent write of the same client (with ``PIN_SECONDS`` and
:class:`~django_poolconf.middleware.ReadWriteMiddleware`). A replica that is down or
too far behind is skipped, and its reads go to the primary.

The state of a request or task lives in :mod:`django_poolconf.routing.scope`; what
is known of each replica, in :mod:`django_poolconf.routing.replicas`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_finished, request_started, setting_changed
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.backends.signals import connection_created
from django.db.models import Model
from django.dispatch import receiver

from django_poolconf.conf.replicas import Topology, topology
from django_poolconf.conf.router import RouterSettings, router_settings
from django_poolconf.engines import get_engine
from django_poolconf.errors import PoolTimeout
from django_poolconf.routing import replicas
from django_poolconf.routing.retry import watch_replica
from django_poolconf.routing.scope import (
    FORCED,
    PRIMARY,
    REPLICA,
    SCOPE,
    Scope,
    current_scope,
)

__all__ = ["ReadWriteRouter", "note_write"]

# The name the module had before routing/ became a package: LOGGING configurations name it.
logger = logging.getLogger("django_poolconf.routers")

# Statements that read, by their first word; any other statement on a primary counts
# as a write. Erring towards "write" only sends more reads to the primary.
_READ_STATEMENTS: Final = (
    "SELECT",
    "SHOW",
    "VALUES",
    "SAVEPOINT",
    "RELEASE",
    "ROLLBACK",
    "SET",
    "RESET",
)


# -- configuration ----------------------------------------------------------------


class _Config:
    """The topology and router settings, in the shapes the hot path wants."""

    __slots__ = ("settings", "replicas", "group", "apps", "default", "turns")

    def __init__(self, settings: RouterSettings, topology: Topology) -> None:
        self.settings = settings
        #: Every routed primary (with replicas, or named in APPS) and its replicas.
        self.replicas: dict[str, tuple[str, ...]] = dict(topology.replicas)
        for primary in settings.apps.values():
            self.replicas.setdefault(primary, ())
        #: Every routed alias, primary or replica, and its primary.
        self.group: dict[str, str] = {p: p for p in self.replicas}
        self.group.update(topology.primary_of)
        self.apps: dict[str, str] = dict(settings.apps)
        self.default = DEFAULT_DB_ALIAS if DEFAULT_DB_ALIAS in self.replicas else None
        # Round robin, from a random start so that processes do not move in step.
        self.turns = {
            primary: itertools.count(random.randrange(len(group) or 1))
            for primary, group in self.replicas.items()
        }


_config: _Config | None = None


def _load() -> _Config:
    global _config
    databases = connections.settings
    config = _Config(router_settings(databases=databases), topology(databases))
    _config = config
    return config


@receiver(setting_changed)
def _forget_config(*, setting: str, **kwargs: Any) -> None:
    global _config
    if setting in {"DATABASES", "POOLCONF", "DATABASE_ROUTERS"}:
        _config = None


# -- the router ---------------------------------------------------------------------


class ReadWriteRouter:
    """Send writes to a model's primary and reads to one of its replicas.

    Put it in ``DATABASE_ROUTERS``; mark each replica alias with ``REPLICA_OF``.
    A model's primary is the one ``POOLCONF["ROUTER"]["APPS"]`` names for its app,
    else ``"default"``; for an object already loaded, the primary of the alias it
    came from. Aliases outside every primary-and-replicas group get ``None``, so
    other routers decide for them.

    :raises ImproperlyConfigured: on the first routing call, when ``REPLICA_OF`` or
        ``POOLCONF["ROUTER"]`` is invalid.
    """

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        """The alias a read of ``model`` goes to; ``None`` when not routed here."""
        config = _config or _load()
        primary = _primary_for(config, model, hints)
        if primary is None:
            return None
        if not config.replicas[primary]:
            return primary
        forced = FORCED.get()
        if forced == PRIMARY:
            return primary
        scope = SCOPE.get() or current_scope()
        if forced == REPLICA:
            choices = scope.forced
            target = choices.get(primary)
            if target is None:
                target = choices[primary] = _pick(config, primary, None) or primary
        else:
            if primary in scope.written:
                return primary
            wrapper = connections[primary]
            if wrapper.in_atomic_block:
                return primary
            _watch(wrapper, _watch_primary)
            choices = scope.targets
            target = choices.get(primary)
            if target is None:
                target = choices[primary] = _choose(config, scope, primary)
        if target != primary and not replicas.is_closed(target):
            # It failed during this scope: the primary for the rest of it, which
            # is at least as fresh as anything read so far.
            choices[primary] = primary
            return primary
        return target

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        """The model's primary; reads of it in this request or task then go there too."""
        config = _config or _load()
        primary = _primary_for(config, model, hints)
        if primary is not None and config.replicas[primary]:
            (SCOPE.get() or current_scope()).written.add(primary)
        return primary

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        """``True`` for two objects of one primary-and-replicas group, else ``None``."""
        config = _config or _load()
        group = config.group
        primary = group.get(obj1._state.db)  # type: ignore[arg-type]
        if primary is not None and primary == group.get(obj2._state.db):  # type: ignore[arg-type]
            return True
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        """``False`` on replicas; on a routed primary, whether the app lives there."""
        config = _config or _load()
        primary = config.group.get(db)
        if primary is None:
            return None
        if primary != db:
            return False
        home = config.apps.get(app_label, config.default)
        return None if home is None else db == home


def _primary_for(
    config: _Config, model: type[Model], hints: Mapping[str, Any]
) -> str | None:
    instance = hints.get("instance")
    if instance is not None:
        db = instance._state.db
        if db is not None:
            return config.group.get(db)
    return config.apps.get(model._meta.app_label, config.default)


def _choose(config: _Config, scope: Scope, primary: str) -> str:
    """Where this scope's reads of ``primary`` go: a replica, or the primary."""
    pin = scope.pins.get(primary)
    position = None
    if pin is not None and pin.expires > time.time():
        if pin.position is None:
            return primary
        position = pin.position
    return _pick(config, primary, position) or primary


def _pick(config: _Config, primary: str, position: int | None) -> str | None:
    """A replica of ``primary`` that is up, recent enough and reachable, or ``None``."""
    settings = config.settings
    group = config.replicas[primary]
    start = next(config.turns[primary]) % len(group)
    candidates = group[start:] + group[:start]
    if settings.balance == "least_busy" and len(candidates) > 1:
        candidates = tuple(sorted(candidates, key=_checked_out))
    max_lag = settings.max_replica_lag
    for alias in candidates:
        if not replicas.is_closed(alias):
            continue
        if max_lag is not None and not replicas.lag_within(
            alias, max_lag, settings.check_interval
        ):
            continue
        if position is not None and not replicas.has_replayed(alias, position):
            continue
        if _reachable(alias):
            return alias
    return None


def _checked_out(alias: str) -> int:
    return get_engine(alias).pool.checkedout()  # type: ignore[attr-defined, no-any-return]


def _reachable(alias: str) -> bool:
    """Borrow the replica's connection for this scope now, so that a dead replica
    costs a fallback rather than a failed read.

    The read would borrow it anyway: in the steady state this costs nothing more.
    """
    wrapper = connections[alias]
    _watch(wrapper, watch_replica)
    if _in_event_loop() or wrapper.connection is not None:
        # Django forbids connecting from async code; the breaker has the say there.
        return True
    try:
        wrapper.ensure_connection()
    except PoolTimeout:
        logger.warning("no free connection for replica %r; reading the primary", alias)
        return False
    except DatabaseError as error:
        replicas.record_failure(alias, error)
        return False
    return True


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# -- watching what Django's connections execute ---------------------------------------


def _watch(wrapper: Any, watcher: Callable[..., Any]) -> None:
    # First, not last: Django's execute_wrapper() context manager removes the last
    # wrapper when it exits.
    wrappers = wrapper.execute_wrappers
    if watcher not in wrappers:
        wrappers.insert(0, watcher)


def _watch_primary(
    execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: Any
) -> Any:
    """Count raw SQL on a primary that is not a plain read as a write."""
    if not isinstance(sql, str) or not sql.lstrip()[:9].upper().startswith(
        _READ_STATEMENTS
    ):
        (SCOPE.get() or current_scope()).written.add(context["connection"].alias)
    return execute(sql, params, many, context)


@receiver(request_started)
def _start_request(**kwargs: Any) -> None:
    SCOPE.set(None)
    config = _config
    if config is not None:
        # This thread runs the request's synchronous code (under ASGI too: the
        # signal's receivers run where the view's ORM calls do): watch its
        # primaries before the first raw statement.
        for primary, group in config.replicas.items():
            if group:
                _watch(connections[primary], _watch_primary)


@receiver(request_finished)
def _finish_request(**kwargs: Any) -> None:
    SCOPE.set(None)


@receiver(connection_created)
def _watch_new_connection(*, connection: Any, **kwargs: Any) -> None:
    # Before any routed query of this thread, e.g. migrate's DDL in a script that
    # then reads through the router.
    config = _config
    if config is None:
        try:
            config = _load()
        except ImproperlyConfigured:
            return  # raised by the router's first call
    if config.replicas.get(connection.alias):
        _watch(connection, _watch_primary)


# -- writes the router does not see ----------------------------------------------------


def note_write(using: str = DEFAULT_DB_ALIAS) -> None:
    """Record a write to ``using`` that the router did not see.

    Reads of its primary then go to the primary for the rest of the request or task,
    as after an ORM write. For writes through SQLAlchemy's :func:`get_engine` or
    another connection than Django's; raw SQL through Django's connection to the
    primary is seen.
    """
    config = _config or _load()
    primary = config.group.get(using)
    if primary is not None:
        current_scope().written.add(primary)
