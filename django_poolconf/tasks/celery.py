"""Read-your-writes for Celery tasks.

Call :func:`install` once in the module that makes your Celery app: both the
processes that send tasks and the workers load it. Then a task sent after a write
carries the primary's WAL position in its message's headers, and its reads in the
worker go to a replica that has replayed it, else to the primary. Each task runs in
a routing scope of its own, as with :func:`~django_poolconf.routers.routing_scope`.
"""

from __future__ import annotations

from typing import Any, Final

from celery.signals import before_task_publish, task_postrun, task_prerun

from django_poolconf.routing.scope import SCOPE
from django_poolconf.tasks import positions

__all__ = ["HEADER", "install", "uninstall"]

#: The message header that carries the positions.
HEADER: Final = "poolconf_positions"

# Where the scope's token waits for task_postrun, on the task's own request context.
_TOKEN: Final = "_poolconf_scope_token"


def install() -> None:
    """Carry read-your-writes from the sender of each task to the worker that runs it.

    Connects receivers to Celery's ``before_task_publish``, ``task_prerun`` and
    ``task_postrun`` signals, for every Celery app of the process; calling it again
    changes nothing. A task run eagerly (``apply()``, ``task_always_eager``) runs in
    its caller's routing scope, which has the caller's writes.
    """
    before_task_publish.connect(_record, weak=False, dispatch_uid=_record)
    task_prerun.connect(_enter, weak=False, dispatch_uid=_enter)
    task_postrun.connect(_leave, weak=False, dispatch_uid=_leave)


def uninstall() -> None:
    """Undo :func:`install`: for tests."""
    before_task_publish.disconnect(_record, dispatch_uid=_record)
    task_prerun.disconnect(_enter, dispatch_uid=_enter)
    task_postrun.disconnect(_leave, dispatch_uid=_leave)


def _record(*, headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    # Protocol 2's headers; protocol 1 (Celery 3) has none, and carries nothing.
    if headers is not None:
        recorded = positions.record()
        if recorded:
            headers[HEADER] = recorded


def _enter(*, task: Any, **kwargs: Any) -> None:
    request = task.request
    if not request.is_eager:
        setattr(request, _TOKEN, positions.enter(getattr(request, HEADER, None)))


def _leave(*, task: Any, **kwargs: Any) -> None:
    request = task.request
    token = getattr(request, _TOKEN, None)
    if token is not None:
        delattr(request, _TOKEN)
        SCOPE.reset(token)
