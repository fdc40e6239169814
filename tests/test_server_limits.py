"""The server's own limits and timeouts, set on the real primary: what the pool does.

``max_connections`` filled by another client; ``idle_session_timeout`` and
``idle_in_transaction_session_timeout`` set for the test database with ``ALTER
DATABASE ... SET`` (undone after each test, whatever happens); ``statement_timeout``.
The measurements go to docs/reliability.rst.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.db import (
    DatabaseError,
    OperationalError,
    connection,
    connections,
    transaction,
)

from django_poolconf import ConnectionFailed, engines, get_engine, pool_stats
from tests.conftest import wsgi_get
from tests.measure import measured
from tests.testapp.models import Item

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

SLACK_S = 1.5


@pytest.fixture(autouse=True)
def fresh_pools() -> Iterator[None]:
    connections.close_all()
    engines.dispose_all()
    yield
    connections.close_all()
    engines.dispose_all()


def _wait_for(condition: Callable[[], bool], what: str, within_s: float = 15) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within_s, f"waited {within_s} s for {what}"
        time.sleep(0.02)
    return time.monotonic() - started


@contextlib.contextmanager
def _database_setting(
    admin: psycopg.Connection[Any], dbname: str, name: str, value: str
) -> Iterator[None]:
    """``ALTER DATABASE dbname SET name = value`` for new sessions; reset after."""
    database = psycopg.sql.Identifier(dbname)
    admin.execute(
        psycopg.sql.SQL("ALTER DATABASE {} SET {} = {}").format(
            database, psycopg.sql.Identifier(name), psycopg.sql.Literal(value)
        )
    )
    try:
        yield
    finally:
        admin.execute(
            psycopg.sql.SQL("ALTER DATABASE {} RESET {}").format(
                database, psycopg.sql.Identifier(name)
            )
        )


def _gone(admin: psycopg.Connection[Any], pid: int) -> Callable[[], bool]:
    def check() -> bool:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchone()
        return row is not None and row[0] == 0

    return check


def _in_thread(call: Callable[[], Any]) -> Any:
    """Run ``call`` in a thread of its own, with its own Django connection; return its result."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(call())
        finally:
            connections.close_all()

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=30)
    return result[0]


# -- idle_session_timeout -----------------------------------------------------------


def test_connections_the_server_closed_for_idleness_are_replaced_before_use(
    admin, test_db_name
):
    with _database_setting(admin, test_db_name, "idle_session_timeout", "1s"):
        parked = wsgi_get("/item/").json()["pid"]  # parked with this thread
        pooled = _in_thread(lambda: wsgi_get("/item/").json()["pid"])  # in the pool
        _wait_for(_gone(admin, parked), "the server to end the idle session")
        _wait_for(_gone(admin, pooled), "the server to end the idle session")

        started = time.monotonic()
        first = wsgi_get("/item/")
        second = _in_thread(lambda: wsgi_get("/item/"))
        measured(
            "idle_session_timeout: both requests served after",
            time.monotonic() - started,
        )

    assert first.status == 200
    assert second.status == 200
    assert {first.json()["pid"], second.json()["pid"]}.isdisjoint({parked, pooled})
    assert pool_stats("default").pre_ping_failures >= 1


# -- idle_in_transaction_session_timeout ------------------------------------------------


def _two_pids() -> set[int]:
    """Check two connections out of the pool at once; their server pids."""
    engine = get_engine()
    with engine.connect() as one, engine.connect() as two:
        return {
            one.exec_driver_sql("SELECT pg_backend_pid()").scalar(),
            two.exec_driver_sql("SELECT pg_backend_pid()").scalar(),
        }


def test_a_transaction_idle_past_the_servers_timeout_fails_clearly_and_only_it_goes(
    admin, test_db_name
):
    with _database_setting(
        admin, test_db_name, "idle_in_transaction_session_timeout", "1s"
    ):
        before = _two_pids()  # two idle connections in the pool
        # psycopg counts the error's class (25) as an InternalError, as with Django's
        # own backend: a DatabaseError, not an OperationalError.
        with pytest.raises(DatabaseError) as failed, transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                (pid,) = cursor.fetchone()
            _wait_for(_gone(admin, pid), "the server to end the idle transaction")
            Item.objects.count()
        connection.close()
        after = _two_pids()
        served = wsgi_get("/item/")

    assert "idle-in-transaction timeout" in str(failed.value), str(failed.value)
    assert pid in before
    assert pid not in after
    if getattr(failed.value.__cause__, "sqlstate", None) == "25P03":
        # One session's own timeout says nothing of the others: they stay.
        assert before - {pid} <= after
    else:
        # psycopg 3.1 reports the server's error without its SQLSTATE: a lost
        # connection, as far as anyone can tell, and every older one is replaced.
        assert not before & after
    assert served.status == 200
    assert get_engine().pool.checkedout() == 0


# -- statement_timeout -------------------------------------------------------------------


def test_a_statement_timeout_in_a_transaction_reaches_the_caller_and_keeps_the_connection(
    pool_options,
):
    pool_options(statement_timeout=200)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (before,) = cursor.fetchone()

    with (
        pytest.raises(OperationalError) as failed,
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT pg_sleep(2)")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (after,) = cursor.fetchone()

    assert "canceling statement due to statement timeout" in str(failed.value)
    assert after == before


# -- max_connections ---------------------------------------------------------------------


@contextlib.contextmanager
def _max_connections(cluster, value: int) -> Iterator[None]:
    """The primary restarted with ``max_connections = value``; restored after."""
    primary = cluster.primary
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET max_connections = {int(value)}")
    connections.close_all()
    engines.dispose_all()
    primary.restart()
    try:
        yield
    finally:
        connections.close_all()
        engines.dispose_all()
        with psycopg.connect(primary.url(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET max_connections")
        primary.restart()
        cluster.wait_for_replica()


def _fill(url: str) -> list[psycopg.Connection[Any]]:
    """Open connections until the server refuses one: another client took every slot."""
    held: list[psycopg.Connection[Any]] = []
    while True:
        try:
            held.append(psycopg.connect(url, autocommit=True, connect_timeout=5))
        except psycopg.OperationalError as error:
            assert error.sqlstate == "53300" or "too many clients" in str(error)
            return held
        assert len(held) < 100, "the server never filled up"


@pytest.mark.slow
def test_a_full_server_fails_new_connections_clearly_and_recovers_when_slots_free(
    cluster, pool_options
):
    pool_options(thread_affinity=False)
    with _max_connections(cluster, 20):
        kept = wsgi_get("/item/").json()["pid"]  # one idle connection in the pool
        others = _fill(cluster.primary.url())
        try:
            served = wsgi_get("/item/")  # the pool's own connection still serves
            with get_engine().connect():  # ... and now it is taken
                started = time.monotonic()
                with pytest.raises(ConnectionFailed) as refused:
                    connection.ensure_connection()
                measured("max_connections: error after", time.monotonic() - started)
        finally:
            for other in others:
                other.close()
        freed = time.monotonic()
        connection.ensure_connection()
        recovered = measured(
            "max_connections: a new connection after slots free",
            time.monotonic() - freed,
        )
        connection.close()

    assert served.status == 200
    assert served.json()["pid"] == kept
    message = str(refused.value)
    assert message.startswith("Could not open a connection for 'default' (host ")
    assert "too many clients already" in message
    assert recovered < SLACK_S
