"""django-tasks-db's queue on the primary, as docs/routing.rst tells users to route it."""

from __future__ import annotations

from typing import Any


class TaskQueueRouter:
    """Read and write django-tasks-db's queue on the primary.

    Its worker claims a task in a transaction opened on the alias it reads the queue
    from (``QuerySet.db``), and must see a task as soon as it is enqueued.
    """

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "default" if model._meta.app_label == "django_tasks_database" else None

    db_for_write = db_for_read
