"""Read-your-writes for Django's tasks framework, with django-tasks-db's worker in another process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connections, transaction
from django.test import override_settings

from django_poolconf.routers import routing_scope
from django_poolconf.tasks.django_tasks import KWARG, read_your_writes
from tests.tasks import jobs
from tests.tasks.conftest import FAST, ROUTER, run_worker
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])

QUEUE_ROUTER = "tests.tasks.routers.TaskQueueRouter"
IMMEDIATE = "django_tasks.backends.immediate.ImmediateBackend"
if jobs.task.__module__.startswith("django.tasks"):  # pragma: no cover - Django 6
    IMMEDIATE = "django.tasks.backends.immediate.ImmediateBackend"


@pytest.fixture
def database_queue() -> Iterator[None]:
    """django-tasks-db's backend, its table on the primary, and the router."""
    with override_settings(
        INSTALLED_APPS=[*settings.INSTALLED_APPS, "django_tasks_db"],
        TASKS={"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}},
        DATABASE_ROUTERS=[QUEUE_ROUTER, ROUTER],
        POOLCONF={"ROUTER": FAST},
    ):
        from django_tasks_db.models import DBTaskResult

        with connections["default"].schema_editor() as editor:
            editor.create_model(DBTaskResult)
        try:
            yield
        finally:
            connections["default"].close()
            with connections["default"].schema_editor() as editor:
                editor.delete_model(DBTaskResult)


@pytest.fixture
def immediate(routing) -> Iterator[None]:
    routing()
    override = override_settings(TASKS={"default": {"BACKEND": IMMEDIATE}})
    override.enable()
    yield
    override.disable()


def _run_queue() -> None:
    """django-tasks-db's worker, in another process, until the queue is empty."""
    done = run_worker(
        [
            "django",
            "db_worker",
            "--batch",
            "--no-reload",
            "--no-startup-delay",
            "--interval=0",
            "--verbosity=2",
        ]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "failed" not in done.stdout.lower(), done.stdout + done.stderr


@pytest.mark.parametrize(
    ("task", "fresh"),
    [(jobs.read_item, True), (jobs.read_item_plain, False)],
    ids=["read_your_writes", "without"],
)
def test_task_enqueued_after_a_write_reads_it_in_a_worker(
    database_queue, paused_replay, task, fresh
):
    with routing_scope():  # a request's
        Item.objects.create(name="enqueued")
        result = task.enqueue("enqueued")

    _run_queue()

    result.refresh()
    assert result.status == "SUCCESSFUL"
    if fresh:
        assert result.return_value == {"found": True, "db": "default"}
        assert set(result.kwargs) == {KWARG}
    else:
        # Replay was paused: without the position, the task read the replica, stale.
        assert result.return_value == {"found": False, "db": "replica"}
        assert result.kwargs == {}
    assert not paused_replay.has("enqueued")


def test_task_enqueued_without_a_write_carries_nothing(database_queue, caught_up):
    with routing_scope():
        Item.objects.filter(name="anything").exists()
        result = jobs.read_item.enqueue("anything")

    _run_queue()

    result.refresh()
    assert result.kwargs == {}
    assert result.return_value == {"found": False, "db": "replica"}


# -- in this process: the immediate backend --------------------------------------------


def test_immediate_task_reads_the_write_before_it(immediate, paused_replay):
    with routing_scope():
        Item.objects.create(name="immediate")
        result = jobs.read_item.enqueue("immediate")
        with_context = jobs.read_item_with_context.enqueue("immediate")

    assert result.return_value == {"found": True, "db": "default"}
    assert with_context.return_value == {"found": True, "db": "default", "attempt": 1}


def test_async_task_reads_the_write_before_it(immediate, paused_replay):
    async def enqueue():
        return await jobs.read_item_async.aenqueue("async")

    with routing_scope():
        Item.objects.create(name="async")
        result = async_to_sync(enqueue)()
    with routing_scope():
        unwritten = async_to_sync(enqueue)()

    assert result.return_value == {"found": True, "db": "default"}
    assert unwritten.kwargs == {}


def test_task_enqueued_inside_atomic_reads_the_primary(immediate, paused_replay):
    with routing_scope(), transaction.atomic():
        Item.objects.create(name="atomic")
        result = jobs.read_item.enqueue("atomic")

    assert result.kwargs == {KWARG: {"default": None}}


def test_using_keeps_read_your_writes(immediate, paused_replay):
    task = jobs.read_item.using(priority=10)

    with routing_scope():
        Item.objects.create(name="using")
        result = task.enqueue("using")

    assert type(task) is type(jobs.read_item)
    assert result.return_value == {"found": True, "db": "default"}


def test_decorating_twice_changes_nothing():
    assert read_your_writes(jobs.read_item) is jobs.read_item


@pytest.mark.parametrize("thing", [jobs._read, object(), type(jobs.read_item)])
def test_read_your_writes_decorates_tasks_only(thing):
    with pytest.raises(TypeError, match=r"put it above @task"):
        read_your_writes(thing)
