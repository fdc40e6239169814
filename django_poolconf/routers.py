"""Read/write splitting: :class:`ReadWriteRouter`, :func:`use_primary` and :func:`use_replica`.

Writes go to a model's primary; reads go to one of its replicas, chosen once per
request or task and kept for it, unless reading the replica could show stale data:
inside ``transaction.atomic()`` on the primary, after a write in the same request or
task, and after a recent write of the same client (with ``PIN_SECONDS`` and
:class:`~django_poolconf.middleware.ReadWriteMiddleware`). A replica that is down or
too far behind is skipped, and its reads go to the primary.

The state of a request or task lives in :mod:`contextvars`, so it is right under
ASGI, in async views, and in threads.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import random
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Generic, TypeVar, overload

from asgiref.sync import iscoroutinefunction
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_finished, request_started, setting_changed
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.backends.signals import connection_created
from django.db.models import Model
from django.dispatch import receiver

# Light imports only: the app's ready() imports this module, to watch connections
# opened before the first routed query (as by migrate).
from django_poolconf import replicas
from django_poolconf.conf.replicas import Topology, topology
from django_poolconf.conf.router import RouterSettings, router_settings
from django_poolconf.errors import PoolTimeout

__all__ = [
    "Pin",
    "ReadWriteRouter",
    "note_write",
    "routing_scope",
    "use_primary",
    "use_replica",
]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

PRIMARY: Final = "primary"
REPLICA: Final = "replica"

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


@dataclass(frozen=True)
class Pin:
    """A client's recent write on one primary, carried across requests by the middleware.

    Until ``expires`` (seconds since the epoch), the client's reads of that primary
    go to the primary; with a ``position`` (causal mode), to a replica that has
    replayed the primary's WAL up to it, else to the primary.
    """

    expires: float
    position: int | None = None


class _Scope:
    """The routing state of one request or task."""

    __slots__ = ("written", "targets", "forced", "pins")

    def __init__(self, pins: Mapping[str, Pin] | None = None) -> None:
        self.written: set[str] = set()  # primaries written to
        self.targets: dict[str, str] = {}  # primary -> where its reads go
        self.forced: dict[str, str] = {}  # primary -> its reads under use_replica()
        self.pins: Mapping[str, Pin] = pins or {}


_scope: ContextVar[_Scope | None] = ContextVar("django_poolconf.scope", default=None)
_forced: ContextVar[str | None] = ContextVar("django_poolconf.forced", default=None)


def _current_scope() -> _Scope:
    scope = _scope.get()
    if scope is None:
        # Outside a request or routing_scope(): one scope for the rest of this
        # context (a management command, a thread), erring towards the primary.
        scope = _Scope()
        _scope.set(scope)
    return scope


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
        forced = _forced.get()
        if forced == PRIMARY:
            return primary
        scope = _scope.get() or _current_scope()
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
            (_scope.get() or _current_scope()).written.add(primary)
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


def _choose(config: _Config, scope: _Scope, primary: str) -> str:
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
    from django_poolconf.engines import get_engine

    return get_engine(alias).pool.checkedout()  # type: ignore[attr-defined, no-any-return]


def _reachable(alias: str) -> bool:
    """Borrow the replica's connection for this scope now, so that a dead replica
    costs a fallback rather than a failed read.

    The read would borrow it anyway: in the steady state this costs nothing more.
    """
    wrapper = connections[alias]
    _watch(wrapper, _watch_replica)
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
        (_scope.get() or _current_scope()).written.add(context["connection"].alias)
    return execute(sql, params, many, context)


def _watch_replica(
    execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: Any
) -> Any:
    """Open a replica's breaker when its connection is lost in the middle of a scope."""
    try:
        return execute(sql, params, many, context)
    except DatabaseError as error:
        from django_poolconf.backends.base import DISCONNECT

        wrapper = context["connection"]
        if wrapper.classify_error(error.__cause__ or error) == DISCONNECT:
            replicas.record_failure(wrapper.alias, error)
        raise


@receiver(request_started)
def _start_request(**kwargs: Any) -> None:
    _scope.set(None)
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
    _scope.set(None)


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


# -- the public context managers ----------------------------------------------------


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
        _current_scope().written.add(primary)


class _Switch(Generic[T]):
    """Set a context variable for a block, or for each call of a function; then restore it.

    A context manager (``with``, ``async with``) and a decorator of functions and
    coroutine functions, like :func:`contextlib.contextmanager`'s, but right for
    coroutines: the variable is set while the coroutine runs, not while it is made.
    """

    __slots__ = ("_var", "_value", "_tokens")

    def __init__(self, var: ContextVar[T], value: Callable[[], T]) -> None:
        self._var = var
        self._value = value
        self._tokens: list[Token[T]] = []

    def __enter__(self) -> None:
        self._tokens.append(self._var.set(self._value()))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._var.reset(self._tokens.pop())

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        var, value = self._var, self._value
        if iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                token = var.set(value())
                try:
                    return await func(*args, **kwargs)
                finally:
                    var.reset(token)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            token = var.set(value())
            try:
                return func(*args, **kwargs)
            finally:
                var.reset(token)

        return run  # type: ignore[return-value]


def _forcing(target: str) -> _Switch[str | None]:
    return _Switch(_forced, lambda: target)


@overload
def use_primary() -> _Switch[str | None]: ...
@overload
def use_primary(func: F) -> F: ...
def use_primary(func: F | None = None) -> _Switch[str | None] | F:
    """Read from the primary inside a ``with`` block, or a decorated function.

    Works in sync and async code (``with``, ``async with``, ``@use_primary`` or
    ``@use_primary()`` on a function or a coroutine function), and nests: the
    innermost of ``use_primary()`` and :func:`use_replica` wins. Writes go to the
    primary regardless.
    """
    switch = _forcing(PRIMARY)
    return switch if func is None else switch(func)


@overload
def use_replica() -> _Switch[str | None]: ...
@overload
def use_replica(func: F) -> F: ...
def use_replica(func: F | None = None) -> _Switch[str | None] | F:
    """Read from a replica inside a block or a decorated function, even if it may lag.

    For reads that tolerate stale data inside a transaction or after a write. Used
    like :func:`use_primary`. When no replica is up, reads still go to the primary.
    """
    switch = _forcing(REPLICA)
    return switch if func is None else switch(func)


@overload
def routing_scope() -> _Switch[_Scope | None]: ...
@overload
def routing_scope(func: F) -> F: ...
def routing_scope(func: F | None = None) -> _Switch[_Scope | None] | F:
    """Route a block, or each call of a function, as one request: from a fresh start.

    Inside, reads pick their replica anew and no earlier write pins them to the
    primary; on the way out, the state outside comes back. The middleware does this
    for each request. Use it for each task of a worker (Celery, RQ, a thread pool):
    without it, a write pins the rest of the worker thread's reads to the primary.
    """
    switch: _Switch[_Scope | None] = _Switch(_scope, _Scope)
    return switch if func is None else switch(func)
