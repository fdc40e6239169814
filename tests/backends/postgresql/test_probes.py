"""Health probes on pooled connections: bounded by the health deadline, harmless to the pool."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from django.db import connection, connections

from django_poolconf import engines, probes
from django_poolconf.probes import ProbeResult
from tests.proxy import FaultProxy

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_pools() -> Iterator[None]:
    connections.close_all()
    engines.dispose_all()
    yield
    connections.close_all()


def test_a_pooled_probe_never_borrows_past_its_deadline_nor_closes_a_healthy_connection(
    pool_options,
):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=10)
    connection.ensure_connection()  # the only connection: none idle
    lender = engines.lender_of("default")
    params = connections["default"].get_connection_params()
    deadline = time.monotonic() + 0.2
    results: list[ProbeResult] = []
    prober = threading.Thread(
        target=lambda: results.append(probes.probe_pooled(lender, params, deadline))
    )
    prober.start()
    while time.monotonic() < deadline + 0.05:  # the health check has given up
        if not prober.is_alive():
            break
        time.sleep(0.01)
    connection.close()  # a connection is free again, after the deadline
    prober.join(15)

    assert not prober.is_alive() and len(results) == 1
    # The probe did not take the pooled connection once the check was over, and
    # so did not close it for want of time.
    assert lender.counters.checkouts == 1
    assert lender.counters.connections_invalidated == 0
    assert engines.get_engine().pool.checkedin() == 1


def test_a_probe_past_its_deadline_closes_no_healthy_connection(pool_options):
    # A probe thread that starts after the health check's deadline has no time left
    # for a ping: it must not close the connection for that, nor condemn the others.
    from django_poolconf import get_engine

    pool_options(pool_size=3, max_overflow=0, pre_ping_threshold=0)
    wrappers = [connections.create_connection("default") for _ in range(3)]
    for wrapper in wrappers:
        wrapper.ensure_connection()
    for wrapper in wrappers:
        wrapper.close()
    lender = engines.lender_of("default")
    pool = get_engine("default").pool
    invalidated_at = pool._invalidate_time
    params = connections["default"].get_connection_params()

    probes.probe_pooled(lender, params, time.monotonic())

    assert lender.counters.connections_invalidated == 0
    assert pool._invalidate_time == invalidated_at


def test_a_probe_does_not_reconnect_an_idle_connection_due_for_recycling(
    pool_options,
):
    settings_dict = connections["default"].settings_dict
    proxy = FaultProxy(settings_dict["HOST"], int(settings_dict["PORT"]))
    port = settings_dict["PORT"]
    settings_dict["PORT"] = str(proxy.port)
    try:
        pool_options(pool_size=1, max_overflow=0, pool_recycle=1, connect_timeout=2)
        connection.ensure_connection()
        connection.close()
        lender = engines.lender_of("default")
        opened = lender.counters.connections_opened
        time.sleep(1.1)  # the idle connection is due for recycling
        proxy.stall()
        params = connections["default"].get_connection_params()
        probes.probe_pooled(lender, params, time.monotonic() + 0.3)
        opened_by_probe = lender.counters.connections_opened - opened
        idle = lender.engine.pool.checkedin()
    finally:
        proxy.restore()
        connections.close_all()
        engines.dispose_all()
        settings_dict["PORT"] = port
        proxy.close()

    # Reconnecting is the next checkout's job: the probe used a connection of its
    # own, and the pool's entry waits, idle, as it was.
    assert (opened_by_probe, idle) == (0, 1)
