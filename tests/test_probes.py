"""Health probes on pooled connections: bounded by the health deadline, harmless to the pool."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from django.db import connection, connections

from django_poolconf import engines, probes
from django_poolconf.probes import ProbeResult

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
    lender = engines._registry["default"].lender
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
