"""The routing state of a request or task, and the blocks that steer it.

A :class:`Scope` holds what the router decided for one request or task: where each
primary's reads go, which primaries were written to, and the client's pins carried
by the middleware. It lives in a :class:`~contextvars.ContextVar`, :data:`SCOPE`,
so it is right under ASGI, in async views, and in threads.
:func:`use_primary`, :func:`use_replica` and :func:`routing_scope` set it, or
:data:`FORCED`, for a block or for each call of a function.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Generic, TypeVar, overload

from asgiref.sync import iscoroutinefunction

__all__ = [
    "FORCED",
    "PRIMARY",
    "REPLICA",
    "SCOPE",
    "Pin",
    "Scope",
    "current_scope",
    "routing_scope",
    "use_primary",
    "use_replica",
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

PRIMARY: Final = "primary"
REPLICA: Final = "replica"


@dataclass(frozen=True)
class Pin:
    """A client's recent write on one primary, carried across requests by the middleware.

    Until ``expires`` (seconds since the epoch), the client's reads of that primary
    go to the primary; with a ``position`` (causal mode), to a replica that has
    replayed the primary's WAL up to it, else to the primary.
    """

    expires: float
    position: int | None = None


class Scope:
    """The routing state of one request or task."""

    __slots__ = ("written", "targets", "forced", "pins")

    def __init__(self, pins: Mapping[str, Pin] | None = None) -> None:
        self.written: set[str] = set()  # primaries written to
        self.targets: dict[str, str] = {}  # primary -> where its reads go
        self.forced: dict[str, str] = {}  # primary -> its reads under use_replica()
        self.pins: Mapping[str, Pin] = pins or {}


#: The current request's or task's :class:`Scope`; ``None`` before its first routing.
SCOPE: Final[ContextVar[Scope | None]] = ContextVar(
    "django_poolconf.scope", default=None
)
#: :data:`PRIMARY` or :data:`REPLICA` inside :func:`use_primary` or
#: :func:`use_replica`; ``None`` outside both.
FORCED: Final[ContextVar[str | None]] = ContextVar(
    "django_poolconf.forced", default=None
)


def current_scope() -> Scope:
    """The current :class:`Scope`, made when there is none yet."""
    scope = SCOPE.get()
    if scope is None:
        # Outside a request or routing_scope(): one scope for the rest of this
        # context (a management command, a thread), erring towards the primary.
        scope = Scope()
        SCOPE.set(scope)
    return scope


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
    return _Switch(FORCED, lambda: target)


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
def routing_scope() -> _Switch[Scope | None]: ...
@overload
def routing_scope(func: F) -> F: ...
def routing_scope(func: F | None = None) -> _Switch[Scope | None] | F:
    """Route a block, or each call of a function, as one request: from a fresh start.

    Inside, reads pick their replica anew and no earlier write pins them to the
    primary; on the way out, the state outside comes back. The middleware does this
    for each request. Use it for each task of a worker (Celery, RQ, a thread pool):
    without it, a write pins the rest of the worker thread's reads to the primary.
    """
    switch: _Switch[Scope | None] = _Switch(SCOPE, Scope)
    return switch if func is None else switch(func)
