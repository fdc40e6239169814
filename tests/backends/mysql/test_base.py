"""The pooled MySQL backend on a real MariaDB: the cycle, exhaustion, restarts, resets, fork, ORM."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connections, transaction
from django.db.utils import DatabaseError, OperationalError
from sqlalchemy import text

from django_poolconf import PoolTimeout, engines, pool_stats
from django_poolconf.backends.mysql import session
from django_poolconf.health import check_health
from django_poolconf.signals import physical_connection_created
from tests.mariadb import MariaDB
from tests.testapp.models import Item


def _one(alias: str, sql: str):
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()


def _connection_id(alias: str) -> int:
    return int(_one(alias, "SELECT CONNECTION_ID()")[0])


@pytest.fixture
def pool_options(mysql_pool: str) -> Iterator[Callable[..., None]]:
    """Give the alias other pool options for one test."""
    settings_dict = connections.settings[mysql_pool]
    original = settings_dict["POOL"]

    def set_options(**options: Any) -> None:
        connections[mysql_pool].close()
        settings_dict["POOL"] = {**original, **options}

    yield set_options
    connections[mysql_pool].close()
    settings_dict["POOL"] = original
    engines.dispose(mysql_pool)


def test_connection_cycle_reuses_one_physical_connection(mysql_pool):
    ids = set()
    charsets = set()
    for _ in range(3):
        ids.add(_connection_id(mysql_pool))
        # Django's setup holds on every checkout of the reused connection.
        assert _one(mysql_pool, "SELECT @@tx_isolation")[0] == "READ-COMMITTED"
        charsets.add(_one(mysql_pool, "SELECT @@character_set_client")[0])
        connections[mysql_pool].close()
    assert len(ids) == 1
    # Django's (utf8mb4; utf8, which the server calls utf8mb3, before Django 5.0).
    assert len(charsets) == 1 and charsets < {"utf8mb4", "utf8mb3"}
    stats = pool_stats(mysql_pool)
    assert stats.connections_opened == 1
    assert stats.checkouts == 3
    assert stats.checked_out == 0


def test_exhaustion_raises_pool_timeout(mysql_pool):
    engine = engines.get_engine(mysql_pool)
    held = [engine.connect() for _ in range(3)]  # pool_size=2, max_overflow=1
    try:
        with pytest.raises(PoolTimeout) as raised:
            _connection_id(mysql_pool)
        assert isinstance(raised.value, OperationalError)
        assert "pool_size=2, max_overflow=1" in str(raised.value)
    finally:
        for connection in held:
            connection.close()
    _connection_id(mysql_pool)  # a connection is free again


def test_a_server_restart_is_survived(mysql_pool, mariadb: MariaDB | None):
    if mariadb is None:
        pytest.skip("restarting the server needs one of the tests' own")
    before = _connection_id(mysql_pool)
    connections[mysql_pool].close()
    mariadb.restart()
    # The idle connection is found closed at checkout and replaced.
    after = _connection_id(mysql_pool)
    connections[mysql_pool].close()
    assert after != before
    assert pool_stats(mysql_pool).connections_opened == 2


@pytest.mark.parametrize("reset_on_return", ["auto", "full"])
def test_a_dirty_return_is_not_seen_by_the_next_borrower(
    mysql_pool, pool_options, reset_on_return
):
    pool_options(reset_on_return=reset_on_return)
    connection = connections[mysql_pool]
    sql_mode = _one(mysql_pool, "SELECT @@SESSION.sql_mode")[0]
    charset = _one(mysql_pool, "SELECT @@character_set_client")[0]
    first = _connection_id(mysql_pool)
    with connection.cursor() as cursor:
        cursor.execute("SET @x = 42")
        cursor.execute("CREATE TEMPORARY TABLE scratch (n int)")
        cursor.execute("SELECT GET_LOCK('poolconf', 0)")
        cursor.execute("SET SESSION sql_mode = 'ANSI_QUOTES'")
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        cursor.execute("SET NAMES latin1")
        cursor.execute("BEGIN")
        cursor.execute("INSERT INTO testapp_item (name) VALUES ('uncommitted')")
    connection.close()

    assert _connection_id(mysql_pool) == first  # the same physical connection
    assert _one(mysql_pool, "SELECT @x")[0] is None
    assert _one(mysql_pool, "SELECT IS_USED_LOCK('poolconf')")[0] is None
    assert _one(mysql_pool, "SELECT @@SESSION.sql_mode")[0] == sql_mode
    assert _one(mysql_pool, "SELECT @@tx_isolation")[0] == "READ-COMMITTED"
    assert _one(mysql_pool, "SELECT @@character_set_client")[0] == charset
    assert _one(mysql_pool, "SELECT @@in_transaction")[0] == 0
    assert not Item.objects.using(mysql_pool).filter(name="uncommitted").exists()
    # Not the server's default (latin1): the connection's, set again.
    assert _one(mysql_pool, "SELECT @@global.character_set_client")[0] != charset
    assert (
        Item.objects.using(mysql_pool).create(name="\N{SNOWMAN}").name == "\N{SNOWMAN}"
    )
    with pytest.raises(Exception, match="doesn't exist"):
        _one(mysql_pool, "SELECT * FROM scratch")


def test_without_com_reset_connection_the_reset_is_change_user(mysql_pool, monkeypatch):
    # A client library without mysql_reset_connection(): COM_CHANGE_USER instead,
    # which authenticates again with the connection's own credentials.
    monkeypatch.setattr(session, "_reset_connection", None)
    first = _connection_id(mysql_pool)
    with connections[mysql_pool].cursor() as cursor:
        cursor.execute("SET @x = 42")
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE")
    connections[mysql_pool].close()
    assert _connection_id(mysql_pool) == first
    assert _one(mysql_pool, "SELECT @x")[0] is None
    assert _one(mysql_pool, "SELECT @@tx_isolation")[0] == "READ-COMMITTED"
    assert _one(mysql_pool, "SELECT DATABASE()")[0] == "test_poolconf_mysql"


def test_the_rollback_policy_rolls_back_and_keeps_the_session(mysql_pool, pool_options):
    pool_options(reset_on_return="rollback")
    connection = connections[mysql_pool]
    with connection.cursor() as cursor:
        cursor.execute("SET @x = 42")
        cursor.execute("BEGIN")
        cursor.execute("INSERT INTO testapp_item (name) VALUES ('uncommitted')")
    connection.close()
    assert _one(mysql_pool, "SELECT @@in_transaction")[0] == 0
    assert not Item.objects.using(mysql_pool).filter(name="uncommitted").exists()
    assert _one(mysql_pool, "SELECT @x")[0] == 42  # documented: only a rollback


def test_djangos_setup_runs_once_per_physical_connection(mysql_pool):
    connection = connections[mysql_pool]
    connection.force_debug_cursor = True
    try:
        _connection_id(mysql_pool)
        connection.close()
        first = [query["sql"] for query in connection.queries_log]
        connection.queries_log.clear()
        _connection_id(mysql_pool)
        connection.close()
        again = [query["sql"] for query in connection.queries_log]
    finally:
        connection.force_debug_cursor = False
        connection.queries_log.clear()
    # Django's init_connection_state() on the new connection only.
    assert any("ISOLATION LEVEL" in sql for sql in first), first
    assert again == ["SELECT CONNECTION_ID()"]


def test_a_physical_connection_created_receiver_holds_for_every_borrower(mysql_pool):
    calls = []

    def set_up(sender: Any, connection: Any, **kwargs: Any) -> None:
        calls.append(connection.alias)
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION sql_mode = 'ANSI_QUOTES'")

    physical_connection_created.connect(set_up)
    try:
        for _ in range(2):
            assert _one(mysql_pool, "SELECT @@SESSION.sql_mode")[0] == "ANSI_QUOTES"
            connections[mysql_pool].close()
    finally:
        physical_connection_created.disconnect(set_up)
    # What it set cannot be restored as a baseline on MySQL: it runs again.
    assert calls == [mysql_pool, mysql_pool]
    assert pool_stats(mysql_pool).connections_opened == 1


def test_statement_timeout(mysql_pool, pool_options):
    pool_options(statement_timeout=300)
    for _ in range(2):  # the new connection, then the reset one
        began = time.monotonic()
        with pytest.raises(OperationalError, match="max_statement_time"):
            _one(mysql_pool, "SELECT SLEEP(3)")
        assert time.monotonic() - began < 2
        assert _one(mysql_pool, "SELECT 1")[0] == 1  # still usable
        connections[mysql_pool].close()
    assert pool_stats(mysql_pool).connections_opened == 1


def test_sqlalchemy_and_django_share_connections(mysql_pool):
    django_id = _connection_id(mysql_pool)
    connections[mysql_pool].close()
    engine = engines.get_engine(mysql_pool)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT CONNECTION_ID()")).scalar() == django_id
        connection.execute(text("INSERT INTO testapp_item (name) VALUES ('sqla')"))
        connection.rollback()  # SQLAlchemy's transaction, as on a fresh connection
    assert not Item.objects.using(mysql_pool).filter(name="sqla").exists()
    assert connections[mysql_pool].get_autocommit()
    assert _connection_id(mysql_pool) == django_id


def test_leak_detection(mysql_pool, pool_options, caplog):
    pool_options(leak_detection_threshold=0.2)
    caplog.set_level(logging.INFO, logger="django_poolconf.leaks")
    _connection_id(mysql_pool)
    deadline = time.monotonic() + 5
    while "longer than leak_detection_threshold" not in caplog.text:
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)
    assert repr(mysql_pool) in caplog.text
    connections[mysql_pool].close()


def test_transaction_scope_holds_a_connection_only_while_it_works(
    mysql_pool, pool_options
):
    pool_options(checkout_scope="transaction")
    connection = connections[mysql_pool]
    _connection_id(mysql_pool)
    assert pool_stats(mysql_pool).checked_out == 0  # parked between statements
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")  # a transaction Django knows nothing of
    assert pool_stats(mysql_pool).checked_out == 1
    with connection.cursor() as cursor:
        cursor.execute("ROLLBACK")
    connection.close()
    assert pool_stats(mysql_pool).checked_out == 0


@pytest.mark.parametrize(
    "sql",
    [
        "SET @x = 1",
        "SELECT 1; SET @x = 1",
        "SELECT @x := 1",
        "SELECT 1 INTO @x",
        "CREATE TEMPORARY TABLE scratch (n int)",
        "SELECT GET_LOCK('poolconf', 0)",
        "CALL sys_missing_procedure()",
    ],
)
def test_transaction_scope_holds_a_connection_whose_session_changed(
    mysql_pool, pool_options, sql
):
    pool_options(checkout_scope="transaction")
    connection = connections[mysql_pool]
    # A procedure that does not exist fails: what a procedure sets is not known.
    with connection.cursor() as cursor, contextlib.suppress(DatabaseError):
        cursor.execute(sql)
    assert pool_stats(mysql_pool).checked_out == 1
    connection.close()
    assert pool_stats(mysql_pool).checked_out == 0


def test_transaction_scope_parks_between_plain_statements(mysql_pool, pool_options):
    pool_options(checkout_scope="transaction")
    for sql in ("SELECT 1", "SELECT * FROM testapp_item FOR UPDATE"):
        _one(mysql_pool, sql)
        assert pool_stats(mysql_pool).checked_out == 0, sql


def test_a_forked_child_never_touches_its_parents_connections(mysql_pool):
    parent_id = _connection_id(mysql_pool)  # held across the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            child_id = _connection_id(mysql_pool)
            connections[mysql_pool].close()
            # What the interpreter's exit would do: collect the inherited ones.
            engines.INHERITED.clear()
            gc.collect()
            os.write(write, str(child_id).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child_id = int(os.read(read, 100) or b"0")
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_id not in (0, parent_id)
    # The parent's session is intact.
    assert _connection_id(mysql_pool) == parent_id
    connections[mysql_pool].close()
    assert _connection_id(mysql_pool) == parent_id


def test_a_forked_child_cannot_use_a_connection_its_parent_holds(mysql_pool):
    engine = engines.get_engine(mysql_pool)
    held = engine.connect()  # in SQLAlchemy's transaction, across the fork
    held.execute(text("INSERT INTO testapp_item (name) VALUES ('parent')"))
    parent_id = held.execute(text("SELECT CONNECTION_ID()")).scalar()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        outcome = b""
        try:
            for use in (
                held.connection.dbapi_connection.rollback,  # the driver's own call
                lambda: held.execute(text("SELECT 1")),
            ):
                try:
                    use()
                    outcome += b"used it;"
                except Exception as error:  # noqa: BLE001
                    outcome += b"refused;" if "parent process" in str(error) else b"?;"
            held.close()  # SQLAlchemy's rollback: refused too, and not sent
            engines.INHERITED.clear()
            gc.collect()
        finally:
            os.write(write, outcome)
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    outcome = os.read(read, 100)
    os.close(read)
    try:
        assert outcome == b"refused;refused;"
        # The parent's session, and its transaction, are intact.
        assert held.execute(text("SELECT CONNECTION_ID()")).scalar() == parent_id
        count = "SELECT COUNT(*) FROM testapp_item WHERE name = 'parent'"
        assert held.execute(text(count)).scalar() == 1
    finally:
        held.close()  # rolled back
    assert not Item.objects.using(mysql_pool).filter(name="parent").exists()


def test_a_connection_killed_while_borrowed_is_replaced(mysql_pool):
    victim = _connection_id(mysql_pool)
    engine = engines.get_engine(mysql_pool)
    with engine.connect() as other:
        other.execute(text(f"KILL CONNECTION {victim}"))
    with pytest.raises(OperationalError):
        _connection_id(mysql_pool)
    connections[mysql_pool].close()
    assert _connection_id(mysql_pool) not in (victim, 0)
    connections[mysql_pool].close()


def test_threads_share_the_pool(mysql_pool):
    errors = []

    def work() -> None:
        try:
            for _ in range(20):
                _connection_id(mysql_pool)
                connections[mysql_pool].close()
        except Exception as error:  # noqa: BLE001
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert pool_stats(mysql_pool).connections_opened <= 3


def test_orm_on_a_migrated_database(mysql_pool):
    items = Item.objects.using(mysql_pool)
    items.all().delete()
    items.create(name="a")
    with transaction.atomic(using=mysql_pool):
        items.create(name="b")
    with pytest.raises(RuntimeError), transaction.atomic(using=mysql_pool):
        items.create(name="c")
        raise RuntimeError("roll back")
    assert sorted(items.values_list("name", flat=True)) == ["a", "b"]
    assert items.filter(name__startswith="a").count() == 1
    items.filter(name="a").update(name="a2")
    assert [item.name for item in items.order_by("id").iterator(chunk_size=1)] == [
        "a2",
        "b",
    ]
    with connections[mysql_pool].cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM django_content_type")
        assert cursor.fetchone()[0] > 0  # migrated
    items.all().delete()


def test_health(mysql_pool):
    _connection_id(mysql_pool)
    connections[mysql_pool].close()
    report = check_health([mysql_pool], max_age=0)
    [health] = report.databases
    assert health.status == "healthy", health
    assert health.latency_ms is not None


def test_poolstatus(mysql_pool):
    import io
    import json

    from django.core.management import call_command

    _connection_id(mysql_pool)
    connections[mysql_pool].close()
    out = io.StringIO()
    call_command("poolstatus", "--database", mysql_pool, "--json", stdout=out)
    shown = json.loads(out.getvalue())
    assert shown["databases"][mysql_pool]["status"] == "healthy", shown
    assert "poolconf-test" not in out.getvalue()  # no password
    out = io.StringIO()
    call_command("poolstatus", "--database", mysql_pool, stdout=out)
    assert mysql_pool in out.getvalue()
