"""drain(): every connection replaced, gracefully, while the pool keeps lending."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, connections, transaction

from django_poolconf import drain, engines, get_async_engine, get_engine, pool_stats
from django_poolconf.pool import registry
from tests.conftest import server_pids, wsgi_get

pytestmark = pytest.mark.django_db(transaction=True)

DEADLINE_S = 10  # the server forgets a closed backend a moment later


@pytest.fixture(autouse=True)
def fresh_pools():
    connections.close_all()
    engines.dispose_all()
    yield
    connections.close_all()


def _pid(sa_connection: Any) -> int:
    return int(sa_connection.exec_driver_sql("SELECT pg_backend_pid()").scalar())


def _wait_gone(admin: psycopg.Connection[Any], dbname: str, pids: set[int]) -> set[int]:
    """The pids of ``pids`` still connected after waiting for them to go."""
    deadline = time.monotonic() + DEADLINE_S
    while pids & server_pids(admin, dbname) and time.monotonic() < deadline:
        time.sleep(0.02)
    return pids & server_pids(admin, dbname)


def test_drain_closes_idle_and_parked_connections_now(
    admin, test_db_name, pool_options
):
    pool_options(pool_size=3, max_overflow=0)
    with get_engine().connect() as one, get_engine().connect() as two:
        idle = {_pid(one), _pid(two)}  # then idle in the pool
        parked = wsgi_get("/item/").json()["pid"]  # parked with this thread
    assert parked not in idle
    assert len(registry.lender_of("default").parked) == 1  # type: ignore[union-attr]
    lender = registry.lender_of("default")

    drain("default")

    assert _wait_gone(admin, test_db_name, idle | {parked}) == set()
    stats = pool_stats("default")
    assert (stats.checked_in, stats.checked_out) == (0, 0)
    # The pool keeps lending, the same pool: new connections.
    assert wsgi_get("/item/").json()["pid"] not in idle | {parked}
    assert registry.lender_of("default") is lender


def test_a_connection_borrowed_during_drain_finishes_and_is_closed_at_checkin(
    admin, test_db_name, pool_options
):
    pool_options(pool_size=2, max_overflow=0, thread_affinity=False)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("CREATE TEMPORARY TABLE drained (n int)")
            cursor.execute("SELECT pg_backend_pid()")
            (pid,) = cursor.fetchone()

            drain("default")

            # Nothing the borrower holds is interrupted.
            cursor.execute("INSERT INTO drained VALUES (1)")
            cursor.execute("SELECT count(*) FROM drained")
            assert cursor.fetchone() == (1,)
        assert pid in server_pids(admin, test_db_name)
    connection.close()  # the checkin closes it: nobody gets it after the drain

    assert _wait_gone(admin, test_db_name, {pid}) == set()
    with get_engine().connect() as one, get_engine().connect() as two:
        assert pid not in {_pid(one), _pid(two)}


def test_a_sqlalchemy_connection_borrowed_during_drain_is_closed_at_its_return(
    admin, test_db_name, pool_options
):
    pool_options(pool_size=2, max_overflow=0)
    with get_engine().connect() as sa_connection:
        pid = _pid(sa_connection)
        drain("default")
        assert _pid(sa_connection) == pid

    assert _wait_gone(admin, test_db_name, {pid}) == set()


def test_a_waiter_is_never_handed_a_connection_from_before_the_drain(
    admin, test_db_name, pool_options
):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=20, thread_affinity=False)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    got: list[int] = []

    def wait_in_line() -> None:
        with get_engine().connect() as sa_connection:
            got.append(_pid(sa_connection))

    waiter = threading.Thread(target=wait_in_line)
    waiter.start()
    deadline = time.monotonic() + DEADLINE_S
    while not registry.lender_of("default").line and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.01)

    drain("default")
    connection.close()  # handed to the waiter, in a new connection
    waiter.join(20)

    assert len(got) == 1 and got[0] != pid
    assert _wait_gone(admin, test_db_name, {pid}) == set()


def test_connections_opened_after_the_drain_are_kept(pool_options):
    pool_options(pool_size=2, max_overflow=0, thread_affinity=False)
    drain("default")  # no pool yet: nothing to do, and no error
    with get_engine().connect() as sa_connection:
        pid = _pid(sa_connection)
    drain("default")
    with get_engine().connect() as sa_connection:
        after_first = _pid(sa_connection)
    with get_engine().connect() as sa_connection:
        assert _pid(sa_connection) == after_first != pid


def test_drain_of_an_alias_that_is_not_pooled_is_an_error():
    with pytest.raises(ImproperlyConfigured, match="not a django-poolconf backend"):
        drain("plain")
    with pytest.raises(ImproperlyConfigured, match="DATABASES has no alias 'nope'"):
        drain("nope")


def test_drain_closes_the_async_engine_s_idle_connections_too(admin, test_db_name):
    engine = get_async_engine("default")

    async def backend_pid() -> int:
        async with engine.connect() as conn:
            result = await conn.exec_driver_sql("SELECT pg_backend_pid()")
            return int(result.scalar_one())

    first = asyncio.run(backend_pid())  # then idle in the async pool

    drain("default")

    assert _wait_gone(admin, test_db_name, {first}) == set()
    assert asyncio.run(backend_pid()) != first
