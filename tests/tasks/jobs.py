"""Tasks of Django's tasks framework for ``tests/tasks/test_django_tasks.py``."""

from __future__ import annotations

from typing import Any

try:
    from django.tasks import task
except ImportError:  # Django < 6.0: the backport
    from django_tasks import task

from django_poolconf.routers import routing_scope
from django_poolconf.tasks.django_tasks import read_your_writes
from tests.testapp.models import Item


def _read(name: str) -> dict[str, Any]:
    items = Item.objects.filter(name=name)
    return {"found": items.exists(), "db": items.db}


@read_your_writes
@task
def read_item(name: str) -> dict[str, Any]:
    """Whether the item is there, and on which alias the task read it."""
    return _read(name)


# Without the helper, a task in a routing scope of its own, as docs/routing.rst
# recommended for workers: else the worker's claim of the task, a write to the
# primary, pins the worker's reads to the primary.
@task
@routing_scope
def read_item_plain(name: str) -> dict[str, Any]:
    """:func:`read_item` without read-your-writes."""
    return _read(name)


@read_your_writes
@task()
async def read_item_async(name: str) -> dict[str, Any]:
    """:func:`read_item` as a coroutine function."""
    items = Item.objects.filter(name=name)
    return {"found": await items.aexists(), "db": items.db}


@read_your_writes
@task(takes_context=True)
def read_item_with_context(context: Any, name: str) -> dict[str, Any]:
    """:func:`read_item`, with the task's context first."""
    return {**_read(name), "attempt": context.attempt}
