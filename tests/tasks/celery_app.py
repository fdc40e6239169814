"""A Celery app on kombu's filesystem transport, for ``tests/tasks/test_celery.py``.

The test process configures it with :func:`configure`; a worker started with
``celery -A tests.tasks.celery_app worker`` reads the same from its environment:
``POOLCONF_TEST_CELERY_DIR`` (the broker's and the results' folder) and
``POOLCONF_TEST_CARRY`` (``"1"``: install django-poolconf's signal receivers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import django
from celery import Celery
from django.apps import apps

if not apps.ready:  # in the worker
    django.setup()

from django_poolconf.tasks import celery as poolconf_celery  # noqa: E402
from tests.testapp.models import Item  # noqa: E402

app = Celery("poolconf_tests", set_as_current=False)


def configure(directory: Path) -> None:
    """Send to and read results from the broker in ``directory``."""
    queue = directory / "queue"
    processed = directory / "processed"
    results = directory / "results"
    control = directory / "control"  # else kombu makes ./control
    for folder in (queue, processed, results, control):
        folder.mkdir(parents=True, exist_ok=True)
    app.conf.update(
        broker_url="filesystem://",
        broker_transport_options={
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "processed_folder": str(processed),
            "control_folder": str(control),
        },
        broker_connection_retry_on_startup=True,
        result_backend=f"file://{results}",
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )


if "POOLCONF_TEST_CELERY_DIR" in os.environ:
    configure(Path(os.environ["POOLCONF_TEST_CELERY_DIR"]))
    if os.environ.get("POOLCONF_TEST_CARRY") == "1":
        poolconf_celery.install()


@app.task
def read_item(name: str) -> dict[str, Any]:
    """Whether the item is there, and on which alias the task read it."""
    items = Item.objects.filter(name=name)
    return {"found": items.exists(), "db": items.db}
