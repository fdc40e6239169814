from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.db import connections
from django.test import RequestFactory

from django_poolconf import engines
from django_poolconf.embedded import EmbeddedCluster
from django_poolconf.health import runner
from tests import servers
from tests.pgbouncer import PgBouncer
from tests.proxy import FaultProxy

#: What pg_stat_statements shows of the reset every return sends.
RESET_STATEMENTS = frozenset(
    {
        "DISCARD ALL",
        "DISCARD PLANS",
        "CLOSE ALL",
        "SET SESSION AUTHORIZATION DEFAULT",
        "RESET ALL",
        "DEALLOCATE ALL",
        "UNLISTEN *",
        "SELECT pg_advisory_unlock_all()",
        "DISCARD TEMP",
        "DISCARD SEQUENCES",
    }
)


def pytest_configure(config: pytest.Config) -> None:
    # `kill <pid>` of a test run stops it as Ctrl-C does: fixtures tear down, and the
    # programs the tests started and the embedded servers stop.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run each module's ``last_in_module`` tests after its others, whatever the shuffle.

    Such a test ends what the module's other tests share (the demo test stops the
    demo they load pages from). pytest-randomly keeps a module's tests together.
    """
    marked = [item for item in items if item.get_closest_marker("last_in_module")]
    for item in marked:
        items.remove(item)
    for item in marked:
        siblings = [i for i, other in enumerate(items) if other.module is item.module]
        items.insert(siblings[-1] + 1 if siblings else len(items), item)


class Response:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


_handler: WSGIHandler | None = None


def wsgi_get(path: str, **query: str) -> Response:
    """One whole request cycle, as a WSGI server runs it.

    Unlike Django's test client, this sends request_started and request_finished with
    close_old_connections connected, so the connection goes back to the pool.
    """
    global _handler
    if _handler is None:
        _handler = WSGIHandler()
    request = RequestFactory().get(path, query)
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    result = _handler(request.environ, start_response)
    try:
        body = b"".join(result)
    finally:
        result.close()  # the WSGI server's close() sends request_finished
    return Response(int(statuses[0].split()[0]), body)


@pytest.fixture
def get() -> Callable[..., Response]:
    return wsgi_get


@pytest.fixture(scope="session")
def cluster() -> EmbeddedCluster:
    """The embedded cluster, for tests that stop or restart a server."""
    running = servers.cluster()
    if running is None:  # pragma: no cover - external servers
        pytest.skip("stopping servers needs the embedded cluster, not external servers")
    return running


@pytest.fixture
def admin(db: None) -> Iterator[psycopg.Connection[Any]]:
    """A plain psycopg connection to the primary, outside any pool, for inspection."""
    settings_dict = connections["default"].settings_dict
    with psycopg.connect(
        host=settings_dict["HOST"],
        port=settings_dict["PORT"],
        user=settings_dict["USER"],
        dbname="postgres",
        autocommit=True,
    ) as connection:
        yield connection


@pytest.fixture
def test_db_name(db: None) -> str:
    return str(connections["default"].settings_dict["NAME"])


def _settings_fixture(key: str) -> Iterator[Callable[..., None]]:
    """Give the default alias other ``key`` options (POOL, OPTIONS) for one test."""
    settings_dict = connections.settings["default"]
    original = settings_dict[key]

    def set_options(**options: Any) -> None:
        connections["default"].close()
        settings_dict[key] = {**original, **options}

    yield set_options
    connections["default"].close()
    settings_dict[key] = original
    engines.dispose("default")


@pytest.fixture
def pool_options() -> Iterator[Callable[..., None]]:
    """Give the default alias other pool options for one test."""
    yield from _settings_fixture("POOL")


@pytest.fixture
def driver_options() -> Iterator[Callable[..., None]]:
    """Give the default alias other ``OPTIONS`` (what reaches psycopg) for one test."""
    yield from _settings_fixture("OPTIONS")


def server_pids(admin: psycopg.Connection[Any], dbname: str) -> set[int]:
    """Backend pids of the client connections to ``dbname``, seen by the server."""
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
        [dbname],
    ).fetchall()
    return {row[0] for row in rows}


@pytest.fixture
def proxy(pool_options: Callable[..., None]) -> Iterator[FaultProxy]:
    """The default alias, connecting through a fault proxy, with a fresh pool."""
    settings_dict = connections.settings["default"]
    original = settings_dict["HOST"], settings_dict["PORT"]
    faults = FaultProxy(str(original[0]), int(original[1]))
    connections.close_all()
    engines.dispose_all()
    runner._probes.clear()
    settings_dict["HOST"], settings_dict["PORT"] = "127.0.0.1", str(faults.port)
    try:
        yield faults
    finally:
        faults.restore()
        connections.close_all()
        engines.dispose_all()
        runner._probes.clear()
        settings_dict["HOST"], settings_dict["PORT"] = original
        faults.close()


@pytest.fixture(params=["transaction", "session"])
def pgbouncer(request: pytest.FixtureRequest, db: None) -> Iterator[PgBouncer]:
    """The default alias behind a real PgBouncer in each pool mode, with a fresh pool.

    ``POOL["pgbouncer"]`` names the mode. A missing binary fails the test.
    """
    settings_dict = connections.settings["default"]
    original = settings_dict["HOST"], settings_dict["PORT"], settings_dict["POOL"]
    bouncer = PgBouncer(
        request.param,
        str(original[0]),
        int(original[1]),
        str(settings_dict["USER"]),
    )
    connections.close_all()
    engines.dispose_all()
    runner._probes.clear()
    try:
        bouncer.start()
        settings_dict["HOST"], settings_dict["PORT"] = "127.0.0.1", str(bouncer.port)
        settings_dict["POOL"] = {**original[2], "pgbouncer": request.param}
        yield bouncer
    finally:
        connections.close_all()
        engines.dispose_all()
        runner._probes.clear()
        settings_dict["HOST"], settings_dict["PORT"], settings_dict["POOL"] = original
        bouncer.close()
