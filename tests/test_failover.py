"""Failover: the primary stops, its replica is promoted, the pool follows the new primary.

Each test builds a primary and replica pair of its own (the session's cluster is
shared by the whole suite and must not be promoted), points the ``default`` alias at
it, and stops it at the end.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from io import StringIO
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import OperationalError, connection, connections
from django.test import override_settings

from django_poolconf import ConnectionFailed, ReadOnlyServer, engines
from django_poolconf.embedded import EmbeddedCluster, EmbeddedServer
from django_poolconf.health import runner
from tests.measure import measured

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TABLE = "failover_write"
# Answers with the port of the server that took the write.
WRITE = f"INSERT INTO {TABLE} DEFAULT VALUES RETURNING inet_server_port()"
READ_WRITE = {"target_session_attrs": "read-write"}
RECOVERY_BOUND_S = 30.0


@pytest.fixture
def pair(test_db_name: str) -> Iterator[EmbeddedCluster]:
    """A primary and its streaming replica of this test's own, with the test database."""
    servers = EmbeddedCluster.start()
    try:
        servers.create_database(test_db_name)
        params = servers.primary.connection_params(test_db_name)
        with psycopg.connect(**params, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {TABLE} (id serial PRIMARY KEY)")
        servers.wait_for_replica()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def point_default() -> Iterator[Callable[..., None]]:
    """Point the ``default`` alias at a list of servers (libpq's multi-host HOST)."""
    settings_dict = connections.settings["default"]
    saved = {key: settings_dict[key] for key in ("HOST", "PORT", "OPTIONS")}

    def fresh_pools() -> None:
        connections.close_all()
        engines.dispose_all()
        runner._probes.clear()

    def point(servers: Sequence[EmbeddedServer], **options: Any) -> None:
        fresh_pools()
        settings_dict["HOST"] = ",".join(server.host for server in servers)
        settings_dict["PORT"] = ",".join(str(server.port) for server in servers)
        settings_dict["OPTIONS"] = {**saved["OPTIONS"], **options}

    yield point
    fresh_pools()
    settings_dict.update(saved)


def _write(get: Callable[..., Any]) -> int | None:
    """One whole request that writes; the port of the server that took it, or None."""
    response = get("/sql/", q=WRITE)
    return response.json()["row"][0] if response.status == 200 else None


def _open_connections(get: Callable[..., Any], count: int) -> None:
    """Leave ``count`` connections in the pool, as concurrent requests do."""
    with ThreadPoolExecutor(count) as executor:
        responses = list(
            executor.map(lambda _: get("/sql/", q="SELECT pg_sleep(0.2)"), range(count))
        )
    assert [r.status for r in responses] == [200] * count


def _write_directly() -> int:
    """A write on Django's connection, outside a request, raising what the caller sees."""
    try:
        with connection.cursor() as cursor:
            cursor.execute(WRITE)
            port: int = cursor.fetchone()[0]
    finally:
        connection.close()
    return port


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_multi_host_primary_follows_a_promoted_replica(get, pair, point_default, mode):
    # The standby comes first: target_session_attrs=read-write skips it.
    point_default([pair.replica, pair.primary], **READ_WRITE)
    assert _write(get) == pair.primary.port
    _open_connections(get, 3)

    pair.primary.stop(mode)
    with pytest.raises(ConnectionFailed) as down:
        _write_directly()  # neither server takes writes: no primary yet
    pair.replica.promote()
    promoted = time.monotonic()
    failed = 0
    while (port := _write(get)) is None:
        failed += 1
        assert time.monotonic() - promoted < RECOVERY_BOUND_S, "no write served"
    recovery = measured(
        f"failover ({mode} stop), promotion to the first write served",
        time.monotonic() - promoted,
    )

    assert "Could not open a connection for 'default'" in str(down.value)
    assert port == pair.replica.port
    assert failed == 0, f"{failed} requests failed after the promotion"
    assert recovery < RECOVERY_BOUND_S
    assert _write(get) == pair.replica.port


def test_a_former_primary_back_as_a_standby_is_skipped_with_target_session_attrs(
    get, pair, point_default
):
    point_default([pair.primary, pair.replica], **READ_WRITE)
    assert _write(get) == pair.primary.port
    _open_connections(get, 2)

    pair.primary.stop("fast")
    pair.replica.promote()
    pair.primary.follow(pair.replica)  # listed first, and now a standby
    ports = [_write(get) for _ in range(3)]

    assert ports == [pair.replica.port] * 3


def test_a_write_on_a_former_primary_back_as_a_standby_is_a_clear_error(
    get, pair, point_default
):
    # No target_session_attrs: the alias goes on pointing at the former primary.
    point_default([pair.primary])
    assert _write(get) == pair.primary.port
    _open_connections(get, 2)

    pair.primary.stop("fast")
    pair.replica.promote()
    pair.primary.follow(pair.replica)
    with pytest.raises(OperationalError) as failed:
        _write_directly()

    assert isinstance(failed.value, ReadOnlyServer)
    assert str(failed.value) == (
        "A write on 'default' reached a read-only server (a standby: the primary "
        "moved?); the pool's connections are replaced. Point "
        "DATABASES['default']['HOST'] at the primary, or list every server in HOST "
        "with OPTIONS['target_session_attrs'] = 'read-write'."
    )
    assert isinstance(failed.value.__cause__, psycopg.errors.ReadOnlySqlTransaction)
    # Reads go on; writes fail the same way until HOST names a primary.
    assert get("/sql/", q="SELECT 1").status == 200
    with pytest.raises(ReadOnlyServer):
        _write_directly()


def test_multi_host_settings_pass_the_checks_and_poolstatus_shows_each_server(
    pair, point_default, test_db_name
):
    point_default([pair.primary, pair.replica], **READ_WRITE)
    servers = f"127.0.0.1:{pair.primary.port},127.0.0.1:{pair.replica.port}"
    call_command("check", databases=["default"])
    json_out, text_out = StringIO(), StringIO()

    call_command("poolstatus", "--database", "default", "--json", stdout=json_out)
    call_command("poolstatus", "--database", "default", stdout=text_out)

    shown = json.loads(json_out.getvalue())["databases"]["default"]
    assert (shown["status"], shown["role"]) == ("healthy", "primary")
    assert shown["server"] == f"{servers}/{test_db_name}"
    assert f"postgres@{servers}/{test_db_name}" in text_out.getvalue()


@pytest.fixture
def pair_replica(pair: EmbeddedCluster) -> Iterator[str]:
    """A replica alias of ``default`` on the pair's replica."""
    base = connections.settings["default"]
    connections.settings["pair_replica"] = {
        **base,
        "HOST": pair.replica.host,
        "PORT": str(pair.replica.port),
        "OPTIONS": {},
        "TEST": dict(base["TEST"]),
        "REPLICA_OF": "default",
    }
    yield "pair_replica"
    with contextlib.suppress(AttributeError):
        del connections["pair_replica"]
    del connections.settings["pair_replica"]
    engines.dispose("pair_replica")
    runner._probes.pop("pair_replica", None)


def test_a_promoted_replica_alias_serves_fresh_reads_and_health_says_promoted(
    get, pair, point_default, pair_replica
):
    point_default([pair.primary, pair.replica], **READ_WRITE)
    assert _health(get)[pair_replica]["status"] == "healthy"

    pair.primary.stop("fast")
    pair.replica.promote()
    written = _write(get)
    with engines.get_engine(pair_replica).connect() as conn:
        read = conn.exec_driver_sql(
            f"SELECT count(*), inet_server_port() FROM {TABLE}"
        ).one()
    health = _health(get)

    assert written == pair.replica.port
    assert read == (1, pair.replica.port)  # the write made after the failover
    assert (health["default"]["status"], health["default"]["reason"]) == (
        "healthy",
        None,
    )
    shown = health[pair_replica]
    assert (shown["status"], shown["reason"]) == ("degraded", "replica_promoted")


def _health(get: Callable[..., Any]) -> dict[str, Any]:
    with override_settings(POOLCONF={"HEALTH": {"CACHE": 0, "TIMEOUT": 5}}):
        databases: dict[str, Any] = get("/health/db").json()["databases"]
    return databases
