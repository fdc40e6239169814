"""The router and /health/db measure a replica's lag with one query, one definition."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.db import connections

from django_poolconf import engines, probes
from django_poolconf.routing import replicas

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])


@pytest.fixture(autouse=True)
def fresh_pools() -> Iterator[None]:
    connections.close_all()
    engines.dispose_all()
    yield
    connections.close_all()
    engines.dispose_all()


def _probe_lag() -> float | None:
    params = connections["replica"].get_connection_params()
    result = probes.probe_server(params, time.monotonic() + 5)
    assert result.failure is None and result.in_recovery
    return result.replication_lag_s


def test_router_and_health_agree_on_the_lag_of_a_replica_cut_off_from_its_primary(
    cluster,
):
    cluster.wait_for_replica()
    assert _probe_lag() == 0  # streaming, and all replayed: both say 0
    assert replicas._measure("replica")[2] == 0
    cluster.primary.stop(mode="fast")
    try:
        # The replica has replayed all it received, but receives nothing any more:
        # its data grows old. Wait until its WAL receiver has stopped streaming.
        deadline = time.monotonic() + 20
        while not _probe_lag():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        in_recovery, _, router_lag = replicas._measure("replica")
        health_lag = _probe_lag()
    finally:
        connections.close_all()
        engines.dispose_all()
        cluster.primary.start()
        cluster.wait_for_replica()

    assert in_recovery is True
    assert health_lag is not None and health_lag > 0
    assert router_lag is not None and router_lag > 0
