"""The engine registry: sharing with SQLAlchemy, async engines, fork, disposal."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, connections

from django_poolconf import dispose_all, engines, get_async_engine, get_engine
from tests.conftest import server_pids, wsgi_get
from tests.proxy import FaultProxy

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_pools():
    connections.close_all()
    engines.dispose_all()


def test_get_engine_shares_the_pool_django_uses():
    engine = get_engine("default")
    connection.ensure_connection()
    try:
        assert engine.pool.checkedout() == 1
        django_pid = connection.connection.info.backend_pid
    finally:
        connection.close()
    assert engine.pool.checkedout() == 0

    with engine.connect() as conn:
        sqlalchemy_pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()

    assert sqlalchemy_pid == django_pid
    assert get_engine() is engine


def test_sqlalchemy_transaction_rolls_back_after_django_used_the_connection():
    wsgi_get("/item/")  # Django used the connection, in autocommit mode
    engine = get_engine()

    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO testapp_item (name) VALUES ('rolled back')")
        raise RuntimeError("abort")

    with engine.connect() as conn:
        count = conn.exec_driver_sql("SELECT count(*) FROM testapp_item").scalar()
    assert count == 0


def test_django_autocommits_after_sqlalchemy_used_the_connection():
    engine = get_engine()
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")  # leaves the driver in non-autocommit mode

    from tests.testapp.models import Item

    Item.objects.create(name="kept")
    pid = connection.connection.info.backend_pid
    connection.close()

    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid
        assert conn.exec_driver_sql("SELECT count(*) FROM testapp_item").scalar() == 1


def test_get_engine_rejects_an_unknown_alias():
    with pytest.raises(
        ImproperlyConfigured, match=r"^DATABASES has no alias 'nope'\.$"
    ):
        get_engine("nope")


def test_get_engine_rejects_an_alias_on_another_backend():
    with pytest.raises(
        ImproperlyConfigured,
        match=r"^DATABASES\['plain'\]\['ENGINE'\] is 'django.db.backends.sqlite3', not a "
        r"django-poolconf backend\.",
    ):
        get_engine("plain")


def test_async_engine_runs_queries_with_the_same_options(pool_options):
    pool_options(pool_size=2, max_overflow=1, statement_timeout=1500)
    engine = get_async_engine()

    async def run() -> tuple[Any, Any]:
        async with engine.connect() as conn:
            timeout = (await conn.exec_driver_sql("SHOW statement_timeout")).scalar()
            recovery = (
                await conn.exec_driver_sql("SELECT pg_is_in_recovery()")
            ).scalar()
        await engine.dispose()
        return timeout, recovery

    assert asyncio.run(run()) == ("1500ms", False)
    assert engine.pool.size() == 2
    assert get_async_engine() is engine


def test_changed_database_name_gets_a_fresh_pool():
    engine = get_engine()
    settings_dict = connections["default"].settings_dict
    original = settings_dict["NAME"]
    settings_dict["NAME"] = "postgres"
    try:
        other = get_engine()
        with other.connect() as conn:
            assert (
                conn.exec_driver_sql("SELECT current_database()").scalar() == "postgres"
            )
    finally:
        settings_dict["NAME"] = original
        connections["default"].close()
    assert other is not engine
    assert get_engine() is not other


def test_dispose_all_closes_idle_connections(admin, test_db_name):
    wsgi_get("/item/")
    assert server_pids(admin, test_db_name)

    dispose_all()

    deadline = time.monotonic() + 5
    while server_pids(admin, test_db_name) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not server_pids(admin, test_db_name)


def _in_child(work: Any) -> int:
    """Run ``work()`` in a forked child; return the integer it returns there."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(reader)
            os.write(writer, str(work()).encode())
            connections.close_all()
            dispose_all()
            code = 0
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        result = int(pipe.read() or 0)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return result


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]  # type: ignore[no-any-return]


def test_forked_child_opens_its_own_connections():
    parent_pid = wsgi_get("/item/").json()["pid"]

    child_pid = _in_child(lambda: wsgi_get("/item/").json()["pid"])

    assert child_pid not in (0, parent_pid)
    # The parent's pooled connection survived the child's exit.
    assert wsgi_get("/item/").json()["pid"] == parent_pid


def test_child_forked_mid_request_forgets_the_borrowed_connection():
    connection.ensure_connection()
    parent_pid = connection.connection.info.backend_pid

    def in_child() -> int:
        assert connection.connection is None
        return _backend_pid()

    try:
        child_pid = _in_child(in_child)
        assert child_pid not in (0, parent_pid)
        assert _backend_pid() == parent_pid
    finally:
        connection.close()


def test_ping_of_a_stalled_connection_is_bounded_by_validation_timeout(pool_options):
    settings_dict = connections["default"].settings_dict
    proxy = FaultProxy(settings_dict["HOST"], int(settings_dict["PORT"]))
    original_port = settings_dict["PORT"]
    settings_dict["PORT"] = str(proxy.port)
    pool_options(pre_ping_threshold=0, validation_timeout=0.5, connect_timeout=2)
    try:
        first = wsgi_get("/item/").json()["pid"]
        proxy.stall()
        started = time.monotonic()
        with pytest.raises(Exception) as raised:
            connection.ensure_connection()
        elapsed = time.monotonic() - started
    finally:
        proxy.restore()
        connections.close_all()
        proxy.close()
        settings_dict["PORT"] = original_port
        engines.dispose_all()

    assert first
    # The ping gave up after validation_timeout; the reconnect through the stalled
    # path then gave up after connect_timeout: never longer.
    assert 0.5 <= elapsed < 0.5 + 2 + 1.5, elapsed
    assert f"(host {settings_dict['HOST']!r}, port {proxy.port})" in str(raised.value)


def test_async_connect_failure_names_the_server(pool_options):
    from django_poolconf import ConnectionFailed

    settings_dict = connections.settings["default"]
    original = settings_dict["PORT"]
    settings_dict["PORT"] = "1"
    pool_options(connect_timeout=2)
    engine = get_async_engine()

    async def run() -> None:
        try:
            async with engine.connect():
                pass  # pragma: no cover - the server is not there
        finally:
            await engine.dispose()

    try:
        with pytest.raises(ConnectionFailed) as raised:
            asyncio.run(run())
    finally:
        settings_dict["PORT"] = original
    assert str(raised.value).startswith(
        "Could not open a connection for 'default' (host '127.0.0.1', port 1): "
    )


def test_sqlalchemy_autocommit_isolation_level_is_honoured():
    wsgi_get("/item/")  # Django used the connection last
    engine = get_engine().execution_options(isolation_level="AUTOCOMMIT")

    with engine.connect() as conn:
        conn.exec_driver_sql("VACUUM testapp_item")  # refused inside a transaction


def test_raw_connection_after_django_is_not_in_autocommit():
    wsgi_get("/item/")

    raw = get_engine().raw_connection()
    try:
        assert raw.driver_connection.autocommit is False
    finally:
        raw.close()


def test_fork_while_another_thread_holds_the_pool_lock_does_not_hang():
    connection.ensure_connection()  # the forking thread borrows a connection
    pool = get_engine().pool
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with pool.lender.state.lock:  # type: ignore[attr-defined]
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            os._exit(0 if connection.connection is None else 1)
        deadline = time.monotonic() + 10
        while (done := os.waitpid(child, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(child, 9)
                os.waitpid(child, 0)
                pytest.fail("the child hung in the fork hook")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        release.set()
        holder.join()
        connection.close()


def test_disposed_engine_refuses_checkouts():
    from django.db import OperationalError

    from django_poolconf import PoolClosed

    engine = get_engine()
    dispose_all()

    with pytest.raises(PoolClosed, match=r"Call get_engine\(\) again") as raised:
        engine.connect()
    assert isinstance(raised.value, OperationalError)
    with get_engine().connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1


def test_connection_borrowed_before_dispose_is_closed_when_returned(
    admin, test_db_name
):
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid

    engines.dispose("default")
    assert pid in server_pids(admin, test_db_name)  # still borrowed
    connection.close()

    deadline = time.monotonic() + 5
    while pid in server_pids(admin, test_db_name) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pid not in server_pids(admin, test_db_name)


def test_forked_child_counts_from_zero_and_watches_no_parent_loan(pool_options):
    from django_poolconf import pool_stats
    from django_poolconf.monitoring import held_now

    pool_options(leak_detection_threshold=60)
    for _ in range(5):
        wsgi_get("/item/")
    connection.ensure_connection()  # borrowed, and watched, when the child forks
    try:
        assert pool_stats("default").checkouts == 6

        def in_child() -> int:
            if list(held_now()):  # the parent's loan is not the child's leak
                return -1
            wsgi_get("/item/")
            return pool_stats("default").checkouts

        assert _in_child(in_child) == 1
    finally:
        connection.close()
