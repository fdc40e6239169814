"""A real MariaDB for the MySQL backend's tests, and a pooled ``mysql`` alias on it.

The server starts once per test session, and only when these tests run (see
``tests/mariadb.py``); the alias exists while this package's tests run, so that the
rest of the suite (the health checks of every alias, say) never sees it. A second
server replicating the first starts only for the tests that ask for ``mysql_replica``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import connections

from django_poolconf import engines, replicas
from django_poolconf.health import runner
from django_poolconf.routing import router
from tests.mariadb import MariaDB, external_settings

ALIAS = "mysql"
REPLICA = "mysql_replica"


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB | None]:
    """The server the tests start (None when POOLCONF_TEST_MYSQL_URL names one)."""
    if external_settings() is not None:
        yield None
        return
    server = MariaDB()
    try:
        server.initialize()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def mysql_server(mariadb: MariaDB | None) -> dict[str, Any]:
    """HOST, PORT, USER and PASSWORD of the server."""
    if mariadb is None:
        external = external_settings()
        assert external is not None
        return external
    return mariadb.settings()


@pytest.fixture(scope="package")
def mysql(mysql_server: dict[str, Any], django_db_blocker: Any) -> Iterator[str]:
    """The ``mysql`` alias (pooled, on the server), with a migrated test database."""
    settings_dict = {
        "ENGINE": "django_poolconf.backends.mysql",
        "NAME": "poolconf",
        **mysql_server,
        "POOL": {"pool_size": 2, "max_overflow": 1, "pool_timeout": 2},
        "TEST": {
            "NAME": "test_poolconf_mysql",
            "CHARSET": "utf8mb4",
            "COLLATION": "utf8mb4_unicode_ci",
        },
    }
    configured = connections.configure_settings(
        {**connections.settings, ALIAS: settings_dict}
    )[ALIAS]
    settings.DATABASES[ALIAS] = connections.settings[ALIAS] = configured
    with django_db_blocker.unblock():
        # No serialize argument: Django 6 deprecates it (the contents are tiny).
        connections[ALIAS].creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        yield ALIAS
    finally:
        with django_db_blocker.unblock():
            connections[ALIAS].close()
            engines.dispose(ALIAS)
            connections[ALIAS].creation.destroy_test_db("poolconf", verbosity=0)
            engines.dispose(ALIAS)
        runner._probes.pop(ALIAS, None)
        del connections[ALIAS]
        # Django's ConnectionHandler reads settings.DATABASES itself: one dict.
        connections.settings.pop(ALIAS, None)
        settings.DATABASES.pop(ALIAS, None)


@pytest.fixture
def unblocked(django_db_blocker: Any) -> Iterator[None]:
    with django_db_blocker.unblock():
        yield


@pytest.fixture
def mysql_pool(mysql: str, unblocked: None) -> Iterator[str]:
    """The alias with a fresh pool for one test, closed and disposed of after it."""
    connections[mysql].close()
    engines.dispose(mysql)
    yield mysql
    connections[mysql].close()
    engines.dispose(mysql)


@pytest.fixture(scope="session")
def mariadb_replica(mariadb: MariaDB | None) -> Iterator[MariaDB]:
    """A second server, replicating the tests' own (GTID, from its first event on)."""
    if mariadb is None:
        pytest.skip(
            "a replica needs the tests' own primary, not POOLCONF_TEST_MYSQL_URL's"
        )
    server = MariaDB(server_id=2)
    try:
        server.initialize_replica(mariadb)
        yield server
    finally:
        server.close()


@pytest.fixture
def mysql_replica(
    mysql: str, mariadb: MariaDB, mariadb_replica: MariaDB, unblocked: None
) -> Iterator[str]:
    """The ``mysql_replica`` alias (``REPLICA_OF`` the ``mysql`` alias), caught up.

    For one test: its pool, the router's state and the health probes start afresh.
    """
    if mariadb_replica.process is None or mariadb_replica.process.poll() is not None:
        mariadb_replica.start()  # a test stopped it
    mariadb_replica.execute("START SLAVE")  # a test may have stopped a thread
    mariadb_replica.wait_for(mariadb)
    primary = connections.settings[mysql]
    settings_dict = {
        "ENGINE": primary["ENGINE"],
        "NAME": primary["NAME"],  # the test database, replicated
        **mariadb_replica.settings(),
        "POOL": dict(primary["POOL"]),
        "REPLICA_OF": mysql,
    }
    configured = connections.configure_settings(
        {**connections.settings, REPLICA: settings_dict}
    )[REPLICA]
    settings.DATABASES[REPLICA] = connections.settings[REPLICA] = configured
    _forget_routing()
    try:
        yield REPLICA
    finally:
        _forget_routing()
        connections[REPLICA].close()
        engines.dispose(REPLICA)
        del connections[REPLICA]
        connections.settings.pop(REPLICA, None)
        settings.DATABASES.pop(REPLICA, None)
        connections[mysql].close()
        engines.dispose(mysql)


def _forget_routing() -> None:
    replicas.reset()
    router._config = None
    runner._probes.pop(REPLICA, None)
