"""The django-health-check plug-in, against the real servers and a hung one."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
from django.db import connections
from django.test import override_settings

from django_poolconf import engines
from django_poolconf.health import runner

base = pytest.importorskip("health_check.base")
if not hasattr(base, "HealthCheck"):  # pragma: no cover - Django 4.2's 3.x
    pytest.skip(
        "the plug-in is for django-health-check 4.x, which needs Django 5.2+",
        allow_module_level=True,
    )

from django_poolconf.contrib.health_check import PooledDatabases  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT = 2.0


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    connections.close_all()
    engines.dispose_all()
    runner._probes.clear()
    with override_settings(POOLCONF={"HEALTH": {"TIMEOUT": TIMEOUT, "CACHE": 0}}):
        yield
    runner._probes.clear()


def run(check: PooledDatabases) -> object:
    return asyncio.run(check.get_result())


def test_healthy_pools_pass(cluster):
    cluster.wait_for_replica()

    result = run(PooledDatabases())

    assert result.error is None  # type: ignore[attr-defined]


def test_a_hung_primary_fails_within_the_timeout_and_names_no_server():
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    base_settings = connections.settings["default"]
    connections.settings["hung"] = {
        **base_settings,
        "PORT": str(listener.getsockname()[1]),
        "TEST": dict(base_settings["TEST"]),
    }
    try:
        started = time.monotonic()
        result = run(PooledDatabases(alias="hung"))
        took = time.monotonic() - started
    finally:
        listener.close()
        del connections.settings["hung"]
        engines.dispose("hung")

    error = result.error  # type: ignore[attr-defined]
    assert type(error).__name__ == "ServiceUnavailable"
    assert str(error) == "Unavailable: hung (primary): timeout"
    assert took < TIMEOUT + 1


def test_a_stopped_replica_is_a_warning(cluster):
    cluster.replica.stop()
    try:
        result = run(PooledDatabases())
    finally:
        cluster.replica.start()
        cluster.wait_for_replica()

    error = result.error  # type: ignore[attr-defined]
    assert type(error).__name__ == "ServiceWarning"
    assert "replica (replica): unreachable" in str(error)
