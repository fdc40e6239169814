"""Read-your-writes for Celery, with a real worker in another process.

The broker is kombu's filesystem transport and the results go to files: no server.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from celery.app.trace import build_tracer
from celery.signals import before_task_publish
from django.test import override_settings

from django_poolconf.routers import routing_scope
from django_poolconf.routing.scope import SCOPE
from django_poolconf.tasks import celery as poolconf_celery
from django_poolconf.tasks import positions
from tests.tasks import celery_app
from tests.tasks.conftest import FAST, ROOT, ROUTER, worker_environment
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])

RESULT_TIMEOUT_S = 60.0


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Path:
    """The broker's and the results' folder: one per session, as the app caches its
    connections and result backend."""
    directory = tmp_path_factory.mktemp("celery")
    celery_app.configure(directory)
    return directory


@pytest.fixture
def worker(broker, tmp_path) -> Iterator[Callable[..., None]]:
    """Start a solo Celery worker process; stopped (SIGTERM, then SIGKILL) after the test."""
    started: list[tuple[subprocess.Popen[str], IO[str]]] = []
    override = override_settings(DATABASE_ROUTERS=[ROUTER], POOLCONF={"ROUTER": FAST})
    override.enable()

    def start(*, carry: bool) -> None:
        log = (tmp_path / "worker.log").open("w")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.tasks.celery_app",
                "worker",
                "--pool=solo",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "--loglevel=INFO",
            ],
            env=worker_environment(
                POOLCONF_TEST_CELERY_DIR=str(broker),
                POOLCONF_TEST_CARRY="1" if carry else "0",
            ),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append((process, log))

    yield start
    override.disable()
    poolconf_celery.uninstall()
    for process, log in started:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck worker
            process.kill()
            process.wait()
        log.close()


def _log(tmp_path) -> str:
    return (tmp_path / "worker.log").read_text()


@pytest.mark.parametrize("carry", [True, False], ids=["install", "without"])
def test_task_sent_after_a_write_reads_it_in_a_worker(
    worker, paused_replay, tmp_path, carry
):
    if carry:
        poolconf_celery.install()
    worker(carry=carry)

    with routing_scope():  # a request's
        Item.objects.create(name="sent")
        result = celery_app.read_item.delay("sent")

    seen = result.get(timeout=RESULT_TIMEOUT_S)
    if carry:
        assert seen == {"found": True, "db": "default"}, _log(tmp_path)
    else:
        # Replay was paused: without the position, the task read the replica, stale.
        assert seen == {"found": False, "db": "replica"}, _log(tmp_path)
    assert not paused_replay.has("sent")


def test_task_sent_without_a_write_reads_a_replica(worker, caught_up, tmp_path):
    poolconf_celery.install()
    worker(carry=True)

    with routing_scope():
        Item.objects.filter(name="anything").exists()
        result = celery_app.read_item.delay("anything")

    assert result.get(timeout=RESULT_TIMEOUT_S) == {"found": False, "db": "replica"}


def test_eager_task_runs_in_its_callers_scope(paused_replay):
    poolconf_celery.install()
    try:
        with (
            override_settings(DATABASE_ROUTERS=[ROUTER], POOLCONF={"ROUTER": FAST}),
            routing_scope(),
        ):
            Item.objects.create(name="eager")
            seen = celery_app.read_item.apply(["eager"]).get()
    finally:
        poolconf_celery.uninstall()

    assert seen == {"found": True, "db": "default"}


def test_worker_runs_a_task_in_the_scope_its_header_carries(broker, paused_replay):
    # The function the worker runs each task message with, here in this process.
    trace = build_tracer(
        celery_app.read_item.name, celery_app.read_item, app=celery_app.app
    )
    poolconf_celery.install()
    try:
        with override_settings(DATABASE_ROUTERS=[ROUTER], POOLCONF={"ROUTER": FAST}):
            with routing_scope():
                Item.objects.create(name="traced")
                carried = positions.record()
            outside = SCOPE.get()
            request = {"id": "traced", poolconf_celery.HEADER: carried}
            traced = trace("traced", ["traced"], {}, request)
            assert SCOPE.get() is outside
    finally:
        poolconf_celery.uninstall()

    assert traced.retval == {"found": True, "db": "default"}


def test_install_twice_connects_once():
    before = len(before_task_publish.receivers)
    poolconf_celery.install()
    poolconf_celery.install()
    try:
        assert len(before_task_publish.receivers) == before + 1
        # Protocol 1 (Celery 3) messages have no headers: nothing is carried.
        before_task_publish.send(sender="task", headers=None)
    finally:
        poolconf_celery.uninstall()
    assert len(before_task_publish.receivers) == before
