"""Read-your-writes for Django's tasks framework.

Decorate a task with :func:`read_your_writes`, above ``@task``. A task enqueued
after a write then carries the primary's WAL position in a keyword argument,
:data:`KWARG`, and its reads, wherever a worker runs it, go to a replica that has
replayed it, else to the primary. Each call runs in a routing scope of its own, as
with :func:`~django_poolconf.routers.routing_scope`.

Works with ``django.tasks`` (Django 6.0+) and the ``django-tasks`` backport, whose
``Task`` classes are alike; it imports neither.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Final, TypeVar

from asgiref.sync import iscoroutinefunction, sync_to_async

from django_poolconf.routing.scope import SCOPE
from django_poolconf.tasks import positions

__all__ = ["KWARG", "read_your_writes"]

TaskT = TypeVar("TaskT")

#: The keyword argument that carries the positions, in the task's stored kwargs.
KWARG: Final = "poolconf_positions"


class _CarriesPositions:
    """Record the positions when the task is enqueued: mixed into the task's own class."""

    __slots__ = ()

    def enqueue(self, *args: Any, **kwargs: Any) -> Any:
        recorded = positions.record()
        if recorded:
            kwargs[KWARG] = recorded
        return super().enqueue(*args, **kwargs)  # type: ignore[misc]

    async def aenqueue(self, *args: Any, **kwargs: Any) -> Any:
        # In a thread: the one that ran the view's ORM calls, whose connection to
        # the primary holds its writes.
        recorded = await sync_to_async(positions.record)()
        if recorded:
            kwargs[KWARG] = recorded
        return await super().aenqueue(*args, **kwargs)  # type: ignore[misc]


_classes: dict[type, type] = {}


def read_your_writes(task: TaskT) -> TaskT:
    """Make ``task`` read what was written before it was enqueued.

    Put it above ``@task`` (``@task()`` too), so that the module-level name is the
    task it returns, which a worker imports (see :ref:`task-read-your-writes` for
    an example).

    Returns a task of a subclass of ``task``'s class, with the same options, whose
    ``enqueue()`` and ``aenqueue()`` add the positions to the keyword arguments
    (none when nothing was written), and whose function runs in a routing scope
    with them, and without them as its keyword argument.

    :raises TypeError: when ``task`` is not a task (a dataclass with ``func`` and
        ``enqueue()``).
    """
    given: Any = task  # django.tasks.Task or the backport's: typed as neither
    if not (
        dataclasses.is_dataclass(given)
        and not isinstance(given, type)
        and hasattr(given, "func")
        and hasattr(given, "enqueue")
    ):
        raise TypeError(
            f"read_your_writes() decorates a task; put it above @task, got {given!r}."
        )
    if isinstance(given, _CarriesPositions):
        return task
    base = type(given)
    cls = _classes.get(base)
    if cls is None:
        cls = _classes.setdefault(
            base,
            type(
                base.__name__,
                (_CarriesPositions, base),
                {"__slots__": (), "__module__": __name__},
            ),
        )
    options = {
        field.name: getattr(given, field.name)
        for field in dataclasses.fields(given)
        if field.init
    }
    options["func"] = _in_scope(options["func"])
    return cls(**options)  # type: ignore[no-any-return]


def _in_scope(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func``, run in the routing scope of the positions passed as :data:`KWARG`."""
    if iscoroutinefunction(func):

        @functools.wraps(func)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            token = positions.enter(kwargs.pop(KWARG, None))
            try:
                return await func(*args, **kwargs)
            finally:
                SCOPE.reset(token)

        return run_async

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        token = positions.enter(kwargs.pop(KWARG, None))
        try:
            return func(*args, **kwargs)
        finally:
            SCOPE.reset(token)

    return run
