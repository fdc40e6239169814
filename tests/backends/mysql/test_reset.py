"""What the reset on return restores for the next borrower: database, role, charset; and
what the backend notices: OPTIONS changed in place, commented SETs, a reused fd."""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Iterator
from typing import Any

import MySQLdb
import pytest
from django.db import connections

from django_poolconf import engines, pool_stats
from django_poolconf.backends.mysql import session
from tests.backends.mysql.test_base import _connection_id, _one, pool_options
from tests.testapp.models import Item

__all__ = ["pool_options"]  # the fixture, for these tests too

DATABASE = "test_poolconf_mysql"


@pytest.fixture
def server(mysql_server: dict[str, Any]) -> Iterator[Any]:
    """A plain connection of the test user, beside the pool."""
    connection = MySQLdb.connect(
        host=mysql_server["HOST"],
        port=int(mysql_server["PORT"]),
        user=mysql_server["USER"],
        password=mysql_server["PASSWORD"],
        database=DATABASE,
        autocommit=True,
    )
    yield connection
    connection.close()


@pytest.fixture
def other_database(server: Any) -> Iterator[str]:
    server.query("CREATE DATABASE IF NOT EXISTS poolconf_other")
    server.query(
        f"CREATE TABLE IF NOT EXISTS poolconf_other.testapp_item "
        f"LIKE {DATABASE}.testapp_item"
    )
    yield "poolconf_other"
    server.query("DROP DATABASE IF EXISTS poolconf_other")


@pytest.fixture
def role(server: Any, mysql_server: dict[str, Any]) -> Iterator[str]:
    server.query("CREATE ROLE IF NOT EXISTS poolconf_role")
    server.query(f"GRANT poolconf_role TO '{mysql_server['USER']}'@'127.0.0.1'")
    yield "poolconf_role"
    server.query("DROP ROLE IF EXISTS poolconf_role")


@pytest.fixture(params=["native", "change_user"])
def reset_path(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way of resetting: COM_RESET_CONNECTION, and the COM_CHANGE_USER fallback."""
    if request.param == "change_user":
        monkeypatch.setattr(session, "_reset_connection", None)
    return str(request.param)


@pytest.mark.parametrize("policy", ["auto", "full"])
@pytest.mark.parametrize("how", ["USE", "select_db"])
def test_the_configured_database_is_restored(
    mysql_pool, pool_options, other_database, server, reset_path, policy, how
):
    pool_options(reset_on_return=policy)
    first = _connection_id(mysql_pool)
    if how == "USE":
        with connections[mysql_pool].cursor() as cursor:
            cursor.execute(f"USE {other_database}")
    else:
        connections[mysql_pool].connection.select_db(other_database)
    connections[mysql_pool].close()
    # The next request, on the same physical connection.
    assert _connection_id(mysql_pool) == first
    assert _one(mysql_pool, "SELECT DATABASE()")[0] == DATABASE
    item = Item.objects.using(mysql_pool).create(name="where")
    connections[mysql_pool].close()
    cursor = server.cursor()
    cursor.execute(f"SELECT COUNT(*) FROM {other_database}.testapp_item")
    assert cursor.fetchone()[0] == 0
    Item.objects.using(mysql_pool).filter(pk=item.pk).delete()


def test_the_role_is_restored(mysql_pool, role, reset_path):
    first = _connection_id(mysql_pool)
    assert _one(mysql_pool, "SELECT CURRENT_ROLE()")[0] is None
    with connections[mysql_pool].cursor() as cursor:
        cursor.execute(f"SET ROLE {role}")
    connections[mysql_pool].close()
    assert _connection_id(mysql_pool) == first
    assert _one(mysql_pool, "SELECT CURRENT_ROLE()")[0] is None


def test_a_role_set_at_connect_is_the_one_restored(mysql_pool, role, reset_path):
    settings_dict = connections.settings[mysql_pool]
    options = settings_dict["OPTIONS"]
    settings_dict["OPTIONS"] = {**options, "init_command": f"SET ROLE {role}"}
    try:
        first = _connection_id(mysql_pool)
        assert _one(mysql_pool, "SELECT CURRENT_ROLE()")[0] == role
        with connections[mysql_pool].cursor() as cursor:
            cursor.execute("SET ROLE NONE")
        connections[mysql_pool].close()
        assert _connection_id(mysql_pool) == first
        assert _one(mysql_pool, "SELECT CURRENT_ROLE()")[0] == role
    finally:
        connections[mysql_pool].close()
        engines.dispose(mysql_pool)
        settings_dict["OPTIONS"] = options


def test_the_drivers_character_set_is_restored(mysql_pool):
    first = _connection_id(mysql_pool)
    connections[mysql_pool].connection.set_character_set("latin1")
    connections[mysql_pool].close()
    name = "\N{SNOWMAN} restored"
    item = Item.objects.using(mysql_pool).create(name=name)
    assert Item.objects.using(mysql_pool).get(pk=item.pk).name == name
    assert _connection_id(mysql_pool) == first
    Item.objects.using(mysql_pool).filter(pk=item.pk).delete()


def test_options_changed_in_place_are_seen_at_the_next_connect(mysql_pool):
    options = connections.settings[mysql_pool]["OPTIONS"]
    assert _one(mysql_pool, "SELECT @@SESSION.sql_mode")[0] != "ANSI_QUOTES"
    connections[mysql_pool].close()
    options["init_command"] = "SET SESSION sql_mode = 'ANSI_QUOTES'"
    try:
        # A new pool: the connection parameters differ.
        assert _one(mysql_pool, "SELECT @@SESSION.sql_mode")[0] == "ANSI_QUOTES"
    finally:
        del options["init_command"]
        connections[mysql_pool].close()
        engines.dispose(mysql_pool)
    assert _one(mysql_pool, "SELECT @@SESSION.sql_mode")[0] != "ANSI_QUOTES"


@pytest.mark.parametrize(
    "sql",
    [
        "/* sqlcommenter */ SET @x = 'mine'",
        "-- note\nSET @x = 'mine'",
        "# note\nSET @x = 'mine'",
        "/* a\nb */ -- c\n SET @x = 'mine'",
        "SELECT 1; /* c */ SET @x = 'mine'",
        "/*!40101 SET @x = 'mine' */",
    ],
)
def test_transaction_scope_holds_after_a_commented_set(mysql_pool, pool_options, sql):
    pool_options(checkout_scope="transaction", pool_size=1, max_overflow=0)
    connection = connections[mysql_pool]
    with connection.cursor() as cursor:
        cursor.execute(sql)
        while cursor.nextset():
            pass
    assert pool_stats(mysql_pool).checked_out == 1
    seen = []

    def other() -> None:
        try:
            seen.append(_one(mysql_pool, "SELECT 1")[0])
        except Exception as error:  # the pool's one connection is held
            seen.append(type(error).__name__)
        finally:
            connections.close_all()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert _one(mysql_pool, "SELECT @x")[0] == "mine"
    connection.close()
    assert seen == ["PoolTimeout"]


def test_a_forked_child_that_reused_the_fd_keeps_its_file(mysql_pool, tmp_path):
    _connection_id(mysql_pool)
    fd = connections[mysql_pool].connection.fileno()
    connections[mysql_pool].close()  # idle in the pool across the fork
    path = tmp_path / "child.log"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        with contextlib.suppress(BaseException):
            os.close(fd)  # as a daemonizing child closes what it inherited
            log = os.open(str(path), os.O_WRONLY | os.O_CREAT, 0o600)
            assert log == fd
            os.write(log, b"a")
            engines.dispose(mysql_pool)
            engines.INHERITED.clear()
            gc.collect()
            os.write(log, b"b")
            code = 0
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert path.read_bytes() == b"ab"
    assert _connection_id(mysql_pool)  # the parent's is fine
