"""What Django promises of its connection, kept by the pooled backend (issue 13).

``connection_created`` on every checkout, ``OPTIONS["pool"]``, wrappers whose settings
differ from their alias's pool, the cursor classes of ``OPTIONS``, ``CONN_MAX_AGE``
and ``CONN_HEALTH_CHECKS``, and a subclass's setup hooks. Against the real server.
"""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Iterator
from typing import Any

import django
import psycopg
import pytest
from django.db import connection, connections
from django.db.backends.postgresql.base import Cursor, ServerBindingCursor
from django.db.backends.signals import connection_created
from django.db.utils import DatabaseErrorWrapper

from django_poolconf import engines, get_engine
from django_poolconf.backends.postgresql.base import DatabaseWrapper, PooledConnection
from django_poolconf.signals import physical_connection_created
from tests.conftest import server_pids, wsgi_get

pytestmark = pytest.mark.django_db(transaction=True)

TENANT_SQL = "SELECT current_setting('app.tenant', true)"


@pytest.fixture(autouse=True)
def fresh_pools() -> Iterator[None]:
    connections.close_all()
    engines.dispose_all()
    yield
    connections.close_all()
    engines.dispose_all()


@pytest.fixture
def receiver() -> Iterator[Any]:
    """Connect a receiver to a signal for one test."""
    connected: list[tuple[Any, Any]] = []

    def connect(signal: Any, function: Any) -> None:
        signal.connect(function)
        connected.append((signal, function))

    yield connect
    for signal, function in connected:
        signal.disconnect(function)


@pytest.fixture
def alias_settings() -> Iterator[Any]:
    """Change keys of the default alias's settings (in place) for one test."""
    settings_dict = connections.settings["default"]
    saved = dict(settings_dict)

    def forget() -> None:
        wrapper = connections["default"]
        wrapper.close()
        for cached in ("timezone", "timezone_name"):  # cached properties
            wrapper.__dict__.pop(cached, None)

    def change(**values: Any) -> None:
        forget()
        settings_dict.update(values)

    yield change
    forget()
    settings_dict.clear()
    settings_dict.update(saved)


@pytest.fixture
def role(admin: psycopg.Connection[Any]) -> Iterator[str]:
    """A role the test database's user may take with SET ROLE."""
    name = "poolconf_promises_role"
    admin.execute(f'DROP ROLE IF EXISTS "{name}"')
    admin.execute(f'CREATE ROLE "{name}"')
    yield name
    connections.close_all()
    engines.dispose_all()
    admin.execute(f'DROP ROLE IF EXISTS "{name}"')


def _copy_with(**options: Any) -> Any:
    """A copy of the default connection with other OPTIONS, as Django's tests make."""
    new = connection.copy()
    new.settings_dict = copy.deepcopy(connection.settings_dict)
    new.settings_dict["OPTIONS"].update(options)
    return new


def _gone(admin: psycopg.Connection[Any], pid: int, dbname: str) -> bool:
    """Wait (5 s at most) for the server to forget a closed connection's backend."""
    deadline = time.monotonic() + 5
    while pid in server_pids(admin, dbname) and time.monotonic() < deadline:
        time.sleep(0.02)
    return pid not in server_pids(admin, dbname)


def _query(wrapper: Any, sql: str) -> Any:
    with wrapper.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


# connection_created and physical_connection_created


def test_connection_created_is_sent_on_every_checkout(receiver):
    seen: list[int] = []
    receiver(
        connection_created,
        lambda sender, connection, **kwargs: seen.append(
            connection.connection.info.backend_pid
        ),
    )

    pids = [wsgi_get("/item/").json()["pid"] for _ in range(5)]

    assert len(set(pids)) == 1  # one physical connection, borrowed five times
    assert seen == pids


def test_setup_in_connection_created_is_never_another_requests(receiver):
    tenant: list[str | None] = [None]

    def set_tenant(sender: Any, connection: Any, **kwargs: Any) -> None:
        if tenant[0] is not None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('app.tenant', %s, false)", tenant)

    receiver(connection_created, set_tenant)

    seen = []
    for value in ("1", "2", None):
        tenant[0] = value
        response = wsgi_get("/sql/", q=TENANT_SQL).json()
        seen.append((response["pid"], response["row"][0]))

    assert len({pid for pid, _ in seen}) == 1
    values = [value for _, value in seen]
    assert values[:2] == ["1", "2"]
    assert values[2] in (None, "")  # reset (DISCARD ALL leaves it empty): not "2"


def test_physical_connection_created_is_sent_once_and_its_setup_kept(
    receiver, admin, test_db_name
):
    seen: list[int] = []

    def set_up(sender: Any, connection: Any, **kwargs: Any) -> None:
        seen.append(connection.connection.info.backend_pid)
        with connection.cursor() as cursor:
            cursor.execute("SET application_name = 'set-up-once'")

    receiver(physical_connection_created, set_up)

    names = [wsgi_get("/sql/", q="SHOW application_name").json() for _ in range(4)]

    assert {name["pid"] for name in names} == set(seen)
    assert len(seen) == 1
    assert [name["row"] for name in names] == [["set-up-once"]] * 4


# OPTIONS["pool"]


def test_options_pool_false_gives_a_plain_connection(driver_options, admin):
    driver_options(pool=False)

    pid = _query(connection, "SELECT pg_backend_pid()")

    assert not isinstance(connection.connection, PooledConnection)
    assert engines.stats_of("default") is None  # no pool was built
    connection.close()
    assert _gone(admin, pid, connection.settings_dict["NAME"])


@pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's pool is new in 5.1")
def test_options_pool_true_steps_aside_for_djangos_pool(driver_options):
    from psycopg_pool import ConnectionPool

    driver_options(pool={"min_size": 0, "max_size": 2})
    try:
        pid = _query(connection, "SELECT pg_backend_pid()")
        pool = connection.pool
        assert isinstance(pool, ConnectionPool)
        assert connection.connection._pool is pool
        connection.close()
        assert pool.get_stats()["pool_available"] == 1  # back in Django's pool
        assert _query(connection, "SELECT pg_backend_pid()") == pid
        assert engines.stats_of("default") is None  # ours was never built
    finally:
        connection.close()
        connection.close_pool()


# A wrapper whose settings differ from its alias's pool


def test_copy_with_a_missing_role_fails_to_connect():
    wrapper = _copy_with(assume_role="poolconf_no_such_role")
    _query(connection, "SELECT 1")  # the alias's pool exists, and is idle after:
    connection.close()

    try:
        with pytest.raises(Exception, match='role "poolconf_no_such_role" does not'):
            wrapper.connect()
    finally:
        wrapper.close()


def test_copy_with_a_role_connects_with_it_outside_the_alias_pool(role):
    _query(connection, "SELECT 1")
    engine = get_engine()
    wrapper = _copy_with(assume_role=role)
    try:
        assert _query(wrapper, "SELECT current_user") == role
        assert not isinstance(wrapper.connection, PooledConnection)
    finally:
        wrapper.close()

    assert get_engine() is engine  # the alias's pool was left alone
    assert _query(connection, "SELECT current_user") == connection.settings_dict["USER"]


def test_copy_with_the_alias_settings_borrows_from_its_pool():
    wrapper = connection.copy()
    try:
        _query(wrapper, "SELECT 1")
        assert isinstance(wrapper.connection, PooledConnection)
        assert get_engine().pool.checkedout() == 1
    finally:
        wrapper.close()


def test_copy_with_another_database_name_leaves_the_alias_pool_alone(admin):
    admin.execute("DROP DATABASE IF EXISTS poolconf_promises_other")
    admin.execute("CREATE DATABASE poolconf_promises_other")
    try:
        _query(connection, "SELECT 1")
        engine = get_engine()
        wrapper = connection.copy()
        wrapper.settings_dict = copy.deepcopy(connection.settings_dict)
        wrapper.settings_dict["NAME"] = "poolconf_promises_other"
        try:
            assert _query(wrapper, "SELECT current_database()") == (
                "poolconf_promises_other"
            )
            assert not isinstance(wrapper.connection, PooledConnection)
        finally:
            wrapper.close()
        assert get_engine() is engine
    finally:
        admin.execute("DROP DATABASE IF EXISTS poolconf_promises_other (FORCE)")


@pytest.fixture
def default_settings() -> Iterator[dict[str, Any]]:
    """The default alias's settings, to change in any way (in place too) for one test."""
    settings_dict = connections.settings["default"]
    options = settings_dict["OPTIONS"]
    saved, saved_options = dict(settings_dict), dict(options)
    yield settings_dict
    connections["default"].close()
    options.clear()
    options.update(saved_options)
    settings_dict.clear()
    settings_dict.update(saved)
    engines.dispose_all()


@pytest.fixture
def other_database(admin: psycopg.Connection[Any]) -> Iterator[str]:
    name = "poolconf_promises_other"
    admin.execute(f"DROP DATABASE IF EXISTS {name}")
    admin.execute(f"CREATE DATABASE {name}")
    yield name
    connections.close_all()
    engines.dispose_all()
    admin.execute(f"DROP DATABASE IF EXISTS {name} (FORCE)")


def test_connection_params_are_made_again_only_when_options_change():
    wrapper = connection.copy()
    params = wrapper.get_connection_params()
    assert wrapper.get_connection_params() is params  # the steady state: reused

    wrapper.settings_dict["OPTIONS"]["application_name"] = "poolconf-changed"

    assert wrapper.get_connection_params()["application_name"] == "poolconf-changed"


def test_copy_sees_options_changed_in_place_after_it_connected():
    _query(connection, "SELECT 1")
    connection.close()
    wrapper = connection.copy()  # the alias's settings (deep-copied)
    try:
        _query(wrapper, "SELECT 1")
        assert isinstance(wrapper.connection, PooledConnection)
        wrapper.close()
        # As Django's tests set it: in place, on the copy's own OPTIONS.
        wrapper.settings_dict["OPTIONS"]["assume_role"] = "poolconf_no_such_role"
        with pytest.raises(Exception, match='role "poolconf_no_such_role" does not'):
            _query(wrapper, "SELECT current_user")
    finally:
        wrapper.close()


def test_copy_sees_options_replaced_after_it_connected():
    _query(connection, "SELECT 1")
    connection.close()
    wrapper = connection.copy()
    try:
        _query(wrapper, "SELECT 1")
        wrapper.close()
        wrapper.settings_dict["OPTIONS"] = {
            **wrapper.settings_dict["OPTIONS"],
            "assume_role": "poolconf_no_such_role",
        }
        with pytest.raises(Exception, match='role "poolconf_no_such_role" does not'):
            _query(wrapper, "SELECT current_user")
    finally:
        wrapper.close()


def test_alias_sees_options_changed_in_place_after_close(default_settings, role):
    user = _query(connection, "SELECT current_user")
    connection.close()
    default_settings["OPTIONS"]["assume_role"] = role

    assert _query(connection, "SELECT current_user") == role, f"ran as {user}"


@pytest.mark.parametrize("affinity", [True, False], ids=["parked", "checked-in"])
def test_next_request_sees_name_changed_in_place(
    default_settings, other_database, pool_options, affinity
):
    pool_options(thread_affinity=affinity)
    first = wsgi_get("/sql/", q="SELECT current_database()").json()["row"][0]
    assert first != other_database
    # Between two requests, as a database-per-tenant app's middleware might do.
    default_settings["NAME"] = other_database

    second = wsgi_get("/sql/", q="SELECT current_database()").json()["row"][0]
    assert second == other_database


@pytest.mark.parametrize("affinity", [True, False], ids=["parked", "checked-in"])
def test_next_request_sees_options_replaced(
    default_settings, role, pool_options, affinity
):
    pool_options(thread_affinity=affinity)
    assert wsgi_get("/sql/", q="SELECT current_user").json()["row"][0] != role
    default_settings["OPTIONS"] = {**default_settings["OPTIONS"], "assume_role": role}

    assert wsgi_get("/sql/", q="SELECT current_user").json()["row"][0] == role


def test_next_request_sees_options_changed_in_place(default_settings, role):
    assert wsgi_get("/sql/", q="SELECT current_user").json()["row"][0] != role
    default_settings["OPTIONS"]["assume_role"] = role

    assert wsgi_get("/sql/", q="SELECT current_user").json()["row"][0] == role


def test_parked_connection_is_kept_while_the_settings_are_unchanged():
    pids = [
        wsgi_get("/sql/", q="SELECT pg_backend_pid()").json()["pid"] for _ in range(3)
    ]
    assert len(set(pids)) == 1
    assert connection._parked


def test_copy_of_a_copy_with_other_settings_leaves_the_alias_pool_alone(role):
    _query(connection, "SELECT 1")
    engine = get_engine()
    first = _copy_with(assume_role=role)
    second = first.copy()
    try:
        assert _query(second, "SELECT current_user") == role
        assert not isinstance(second.connection, PooledConnection)
    finally:
        second.close()
        first.close()
    assert get_engine() is engine  # the alias's pool was left alone


def test_copy_of_a_copy_with_the_alias_settings_borrows_from_its_pool():
    _query(connection, "SELECT 1")
    first = connection.copy()
    second = first.copy()
    try:
        _query(second, "SELECT 1")
        assert isinstance(second.connection, PooledConnection)
    finally:
        second.close()
        first.close()


# The cursor classes of OPTIONS


class MyCursor(Cursor):
    pass


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"cursor_factory": MyCursor}, MyCursor),
        ({"server_side_binding": True}, ServerBindingCursor),
    ],
)
def test_cursor_class_of_options_is_the_one_django_uses(
    driver_options, options, expected
):
    driver_options(**options)

    for _ in range(3):  # a new connection, then the same one borrowed again
        with connection.cursor() as cursor:
            assert isinstance(cursor.cursor, expected)
        assert connection.connection.cursor_factory is expected
        connection.close()


def test_copy_with_a_cursor_class_uses_it():
    wrapper = _copy_with(cursor_factory=MyCursor)
    try:
        wrapper.connect()
        assert wrapper.connection.cursor_factory is MyCursor
    finally:
        wrapper.close()


# CONN_MAX_AGE and CONN_HEALTH_CHECKS


def test_conn_max_age_none_keeps_the_connection_checked_out_across_requests(
    alias_settings,
):
    alias_settings(CONN_MAX_AGE=None)

    pids = [wsgi_get("/item/").json()["pid"] for _ in range(3)]

    assert len(set(pids)) == 1
    assert get_engine().pool.checkedout() == 1  # held by this thread, in the pool
    connection.close()
    assert get_engine().pool.checkedout() == 0


def test_conn_max_age_sends_connection_created_only_when_it_connects(
    alias_settings, receiver
):
    alias_settings(CONN_MAX_AGE=None)
    seen: list[int] = []
    receiver(connection_created, lambda sender, connection, **kwargs: seen.append(1))

    for _ in range(3):
        wsgi_get("/item/")

    assert seen == [1]  # as with Django's own backend: the connection is kept


def test_conn_max_age_gives_the_connection_back_once_expired(alias_settings):
    alias_settings(CONN_MAX_AGE=0.2)
    wsgi_get("/item/")
    assert get_engine().pool.checkedout() == 1
    deadline = connection.close_at
    while time.monotonic() < deadline:  # the age itself is what is tested
        time.sleep(deadline - time.monotonic())
    wsgi_get("/health/db")  # any request's end

    assert get_engine().pool.checkedout() == 0


def test_conn_health_checks_replace_a_held_connection_the_server_closed(
    alias_settings, admin
):
    alias_settings(CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=True)
    first = wsgi_get("/item/").json()["pid"]
    admin.execute("SELECT pg_terminate_backend(%s)", [first])

    response = wsgi_get("/item/")

    assert response.status == 200
    assert response.json()["pid"] != first
    assert get_engine().pool.checkedout() == 1


def test_conn_health_checks_close_a_held_connection_that_fails_them(
    alias_settings, admin
):
    alias_settings(CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=True)
    first = _query(connection, "SELECT pg_backend_pid()")
    # Behind Django's back, as a driver-level user may: Django's "SELECT 1" fails.
    connection.connection.execute("BEGIN")
    with pytest.raises(psycopg.errors.DivisionByZero):
        connection.connection.execute("SELECT 1 / 0")
    connection.close_if_unusable_or_obsolete()  # a request's end: kept

    second = _query(connection, "SELECT pg_backend_pid()")  # health-checked first

    assert second != first
    assert _gone(admin, first, connection.settings_dict["NAME"])
    assert get_engine().pool.checkedout() == 1


def test_is_usable_is_false_once_the_connection_went_back():
    # Django's own test of #21553 closes the connection behind the wrapper's back
    # with _close(); the pooled wrapper then holds no connection (Django 4.2's
    # is_usable() did not expect None).
    _query(connection, "SELECT 1")
    connection._close()
    try:
        assert connection.is_usable() is False
    finally:
        connection.close()


@pytest.mark.skipif(
    "__del__" not in vars(DatabaseErrorWrapper),
    reason="Django 6.0+ lets a dropped wrapper go without the garbage collector",
)
def test_dropped_copy_leaves_nothing_for_the_garbage_collector():
    # Django's own test (backends.base.test_base), with the pooled wrapper.
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        copied = connection.copy()
        with copied.wrap_database_errors:
            assert copied.queries == []
        copied.close()
        del copied
        gc.collect()
        # Only what the copy held: another thread of the suite may drop a pool
        # (SQLAlchemy's engines hold reference cycles) in the meantime.
        kept = [
            type(item).__name__
            for item in gc.garbage
            if isinstance(item, DatabaseWrapper | DatabaseErrorWrapper)
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()

    assert kept == []


# A subclass's setup hooks


@pytest.fixture
def custom() -> Iterator[Any]:
    """Make wrappers of tests.custom_backend, a subclass of the pooled backend.

    On the default alias's own settings dict, as Django's ConnectionHandler makes
    them (pytest-django allows no other alias): they borrow from a pool of their own.
    """
    from tests.custom_backend.base import DatabaseWrapper

    DatabaseWrapper.per_checkout.clear()
    DatabaseWrapper.roles_set.clear()
    DatabaseWrapper.tenant[0] = None
    made: list[Any] = []

    def make() -> Any:
        made.append(DatabaseWrapper(connections.settings["default"], "default"))
        return made[-1]

    yield make
    for wrapper in made:
        wrapper.close()


def test_subclass_configure_timezone_is_honoured(custom, alias_settings, admin):
    server_default = admin.execute("SHOW TimeZone").fetchone()[0]
    assert server_default != "Asia/Kathmandu"
    alias_settings(TIME_ZONE="Asia/Kathmandu")

    assert _query(connection, "SHOW TimeZone") == "Asia/Kathmandu"
    assert _query(custom(), "SHOW TimeZone") == server_default


def test_subclass_configure_role_runs_once_per_connection_and_is_kept(
    custom, alias_settings, role
):
    alias_settings(OPTIONS={"assume_role": role})
    wrapper = custom()

    users = []
    for _ in range(3):
        users.append(_query(wrapper, "SELECT current_user"))
        wrapper.close()

    assert users == [role] * 3
    assert len(wrapper.roles_set) == 1


def test_subclass_init_connection_state_runs_on_every_checkout(custom):
    wrapper = custom()
    seen = []
    for tenant in ("1", None, "2"):
        wrapper.tenant[0] = tenant
        seen.append(_query(wrapper, TENANT_SQL))
        wrapper.close()

    assert len(wrapper.per_checkout) == 3
    assert len(set(wrapper.per_checkout)) == 1  # one physical connection
    assert seen[0] == "1"
    assert seen[1] in (None, "")  # reset: never the last checkout's
    assert seen[2] == "2"
