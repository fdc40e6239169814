"""The read/write router's promises hold in ``checkout_scope = "transaction"``.

The router's own tests (their fixtures in ``conftest.py``), run with both the
primary and its replica in transaction scope: a read after a write, raw SQL's writes and atomic blocks still go to the
primary, fresh reads to the replica.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connections

from django_poolconf import engines, pool_stats
from tests.routing import test_router

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])


@pytest.fixture(autouse=True)
def transaction_scope() -> Iterator[None]:
    originals = {}
    for alias in ("default", "replica"):
        settings_dict = connections.settings[alias]
        originals[alias] = settings_dict["POOL"]
        connections[alias].close()
        settings_dict["POOL"] = {**originals[alias], "checkout_scope": "transaction"}
    yield
    for alias, original in originals.items():
        connections[alias].close()
        connections.settings[alias]["POOL"] = original
        engines.dispose(alias)


def _in_transaction_scope() -> None:
    for alias in ("default", "replica"):
        assert connections[alias].get_pool_settings().checkout_scope == "transaction"
        assert pool_stats(alias).checked_out == 0


def test_read_in_a_fresh_request_goes_to_the_replica(routing, caught_up):
    test_router.test_read_in_a_fresh_request_goes_to_the_replica(routing, caught_up)
    _in_transaction_scope()


def test_read_after_write_reads_its_write_on_the_primary(routing, paused_replay):
    test_router.test_read_after_write_in_a_request_reads_its_write_on_the_primary(
        routing, paused_replay
    )
    _in_transaction_scope()


def test_raw_sql_write_pins_the_request_to_the_primary(routing, paused_replay):
    test_router.test_raw_sql_write_pins_the_request_to_the_primary(
        routing, paused_replay
    )
    _in_transaction_scope()


def test_read_inside_atomic_goes_to_the_primary(routing, caught_up):
    test_router.test_read_inside_atomic_goes_to_the_primary(routing, caught_up)
    _in_transaction_scope()
