"""A MariaDB replica behind the router and /health/db: streaming, stopped, shut down."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connections
from django.test import override_settings

from django_poolconf import replicas
from django_poolconf.backends.mysql.replication import status
from django_poolconf.routers import routing_scope
from tests.conftest import wsgi_get
from tests.mariadb import MariaDB
from tests.testapp.models import Item

ROUTER = "django_poolconf.routers.ReadWriteRouter"
# Short enough for tests; the defaults are 1 s, 30 s and 1 s.
FAST = {"BACKOFF": 0.2, "MAX_BACKOFF": 1.0, "CHECK_INTERVAL": 0.1}
DEADLINE_S = 30.0


@pytest.fixture
def routed(mysql_replica: str) -> Iterator[str]:
    """The router, with the test app's models on the ``mysql`` primary."""
    options = {**FAST, "MAX_REPLICA_LAG": 5, "APPS": {"testapp": "mysql"}}
    with override_settings(POOLCONF={"ROUTER": options}, DATABASE_ROUTERS=[ROUTER]):
        yield mysql_replica


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > DEADLINE_S:
            raise AssertionError(f"{what}: not within {DEADLINE_S} s")
        time.sleep(0.05)


def _insert(primary: MariaDB, name: str) -> None:
    """A write on the primary that the router does not see (no pin)."""
    database = connections["mysql"].settings_dict["NAME"]
    primary.execute(f"INSERT INTO {database}.testapp_item (name) VALUES ('{name}')")


def _served_by(name: str) -> str | None:
    """The alias a fresh scope's read of the item ``name`` went to (None: not found)."""
    with routing_scope():
        item = Item.objects.filter(name=name).first()
    return None if item is None else item._state.db


def _reads_go_to(alias: str, name: str) -> Callable[[], bool]:
    return lambda: _served_by(name) == alias


def test_a_write_on_the_primary_is_read_on_the_replica(
    routed, mariadb, mariadb_replica
):
    _insert(mariadb, "streamed")
    mariadb_replica.wait_for(mariadb)

    _wait_until(_reads_go_to(routed, "streamed"), "reads did not go to the replica")

    state = replicas.replica_states()[routed]
    assert state.in_recovery is True
    assert state.lag_s is not None and 0 <= state.lag_s <= 5
    assert state.breaker == "closed"


def test_a_stopped_sql_thread_sends_reads_to_the_primary(
    routed, mariadb, mariadb_replica
):
    _insert(mariadb, "before the stop")
    mariadb_replica.wait_for(mariadb)
    _wait_until(_reads_go_to(routed, "before the stop"), "the replica was not used")

    mariadb_replica.execute("STOP SLAVE SQL_THREAD")
    _insert(mariadb, "while stopped")

    # Reads ask for measurements; its lag is unknown: too far behind, as
    # PostgreSQL's unknown lag.
    _wait_until(_reads_go_to("mysql", "while stopped"), "reads stayed on the replica")
    for _ in range(5):
        assert _served_by("while stopped") == "mysql"
        time.sleep(FAST["CHECK_INTERVAL"])
    state = replicas.replica_states()[routed]
    assert (state.in_recovery, state.lag_s, state.breaker) == (True, None, "closed")

    mariadb_replica.execute("START SLAVE SQL_THREAD")
    mariadb_replica.wait_for(mariadb)
    _wait_until(_reads_go_to(routed, "while stopped"), "reads did not come back")


def _health(alias: str, **options: Any) -> dict[str, Any]:
    with override_settings(POOLCONF={"HEALTH": {"CACHE": 0, **options}}):
        response = wsgi_get("/health/db")
    return response.json()["databases"][alias]  # type: ignore[no-any-return]


def test_health_reports_the_replicas_lag_and_state(mysql_replica, mariadb_replica):
    shown = _health(mysql_replica, MAX_REPLICA_LAG=5)
    assert (shown["status"], shown["role"], shown["reason"]) == (
        "healthy",
        "replica",
        None,
    )
    assert shown["replication_lag_s"] == 0  # caught up and idle
    assert shown["breaker"] == "closed"
    primary = _health("mysql", MAX_REPLICA_LAG=5)
    assert (primary["status"], primary["replication_lag_s"]) == ("healthy", None)

    mariadb_replica.execute("STOP SLAVE SQL_THREAD")

    shown = _health(mysql_replica, MAX_REPLICA_LAG=5)
    assert (shown["status"], shown["reason"]) == ("degraded", "replica_lagging")
    assert shown["replication_lag_s"] is None  # unknown
    # Without a bound on the lag, an unknown lag is not a problem of its own.
    assert _health(mysql_replica)["status"] == "healthy"


def test_a_shut_down_replica_is_survived_by_reads(routed, mariadb, mariadb_replica):
    _insert(mariadb, "before the shutdown")
    mariadb_replica.wait_for(mariadb)
    _wait_until(_reads_go_to(routed, "before the shutdown"), "the replica was not used")
    connections.close_all()  # its connection goes back to its pool

    mariadb_replica.stop()
    try:
        for _ in range(5):
            assert _served_by("before the shutdown") == "mysql"
        assert replicas.replica_states()[routed].breaker in {"open", "half_open"}
        shown = _health(routed)
        assert (shown["status"], shown["reason"]) == ("unhealthy", "unreachable")
    finally:
        mariadb_replica.start()

    _wait_until(_reads_go_to(routed, "before the shutdown"), "reads did not come back")


@pytest.mark.parametrize(
    ("read_only", "rows", "expected"),
    [
        (0, [], (False, False, None, 0.0)),
        (
            1,
            [
                {
                    "Slave_IO_Running": "Yes",
                    "Slave_SQL_Running": "Yes",
                    "Seconds_Behind_Master": 3,
                }
            ],
            (True, True, None, 3.0),
        ),
        # MySQL 8.0.22+'s names; a stopped SQL thread: unknown lag.
        (
            "0",
            [
                {
                    "Replica_IO_Running": "Yes",
                    "Replica_SQL_Running": "No",
                    "Seconds_Behind_Source": None,
                }
            ],
            (True, False, None, None),
        ),
        # An I/O thread cut off from the primary: unknown, whatever the seconds say.
        (
            1,
            [
                {
                    "Slave_IO_Running": b"Connecting",
                    "Slave_SQL_Running": b"Yes",
                    "Seconds_Behind_Master": 0,
                }
            ],
            (True, True, None, None),
        ),
        # No privilege to read the status: a read-only server counts as a replica.
        (1, None, (True, True, None, None)),
    ],
)
def test_status_reads_the_replica_status(read_only, rows, expected):
    assert status(read_only, rows) == expected
