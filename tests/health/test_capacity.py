"""Capacity planning and the deployment checks that need the servers (``check --deploy --database``)."""

from __future__ import annotations

import time

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connections

from django_poolconf import engines
from django_poolconf.checks import check_deployment
from django_poolconf.health import check_health, runner
from django_poolconf.health.capacity import ServerCapacity, plan_capacity
from tests.health.test_runner import TIMEOUT, extra_alias, use_health

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_pools_and_probes(monkeypatch):
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    connections.close_all()
    engines.dispose_all()
    runner._probes.clear()
    yield
    runner._probes.clear()


def ids(messages):
    return [message.id for message in messages]


def test_worst_case_counts_every_alias_on_the_server(cluster):
    with extra_alias("reports", POOL={"pool_size": 2, "max_overflow": 1}):
        report = check_health(["default"], max_age=0, server_view=True)
        [plan] = plan_capacity(report, workers=10, hosts=3)

    assert plan == ServerCapacity(
        server=f"127.0.0.1:{cluster.primary.port}",
        # The router tests' "analytics" primary is on the same server too.
        aliases=("default", "analytics", "reports"),
        per_process=8 + 8 + 3,
        workers=10,
        hosts=3,
        max_connections=200,
        reserved_connections=3,
        total_connections=plan.total_connections,
    )
    assert plan.worst_case == 570
    assert plan.available == 197
    assert plan.exceeds


def test_capacity_beyond_max_connections_warns_when_workers_are_known():
    with use_health(WORKERS=30):
        messages = check_deployment(databases=["default"])

    assert ids(messages) == ["django_poolconf.W004"]
    assert messages[0].msg == (
        "The pools of 'default', 'analytics' may open 480 connections to one server "
        "(16 per process x 30 workers x 1 host), more than the 197 it allows "
        "(max_connections=200 minus 3 reserved)."
    )


def test_capacity_within_max_connections_or_unknown_workers_is_quiet():
    with use_health(WORKERS=12):  # 16 x 12 = 192 <= 197
        assert check_deployment(databases=["default"]) == []
    with use_health():
        assert check_deployment(databases=["default"]) == []


def test_capacity_is_checked_only_with_database():
    with use_health(WORKERS=30):
        assert check_deployment() == []


def test_check_deploy_command_reports_capacity():
    with use_health(WORKERS=30), pytest.raises(SystemCheckError) as raised:
        call_command(
            "check", "--deploy", "--database", "default", "--fail-level", "WARNING"
        )

    assert "django_poolconf.W004" in str(raised.value)


def test_recycle_longer_than_idle_session_timeout_warns():
    options = {"options": "-c idle_session_timeout=10s"}
    with use_health(), extra_alias("idle", OPTIONS=options):
        messages = check_deployment(databases=["idle"])
    with use_health(), extra_alias("idle", OPTIONS=options, POOL={"pool_recycle": 5}):
        fine = check_deployment(databases=["idle"])

    assert ids(messages) == ["django_poolconf.W006"]
    assert messages[0].msg == (
        "DATABASES['idle']['POOL']['pool_recycle'] is 3600 s, not shorter than the "
        "server's idle_session_timeout (10 s): the server closes idle pooled "
        "connections before the pool replaces them."
    )
    assert fine == []


def test_unreachable_server_is_skipped_within_the_timeout(hung_server):
    port = hung_server.getsockname()[1]
    with use_health(WORKERS=1000), extra_alias("hung", PORT=str(port)):
        started = time.monotonic()
        messages = check_deployment(databases=["hung"])
        took = time.monotonic() - started

    assert messages == []
    assert took < TIMEOUT + 1


@pytest.fixture
def hung_server():
    import socket

    listener = socket.create_server(("127.0.0.1", 0), backlog=8)
    yield listener
    listener.close()
