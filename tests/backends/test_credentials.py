"""Credentials made by code: a callable PASSWORD and POOL's connect_params.

In process for the calls and their errors; against the real primary for a password
rotated with ``ALTER ROLE`` while the pool lends.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import OperationalError, connection, connections, transaction
from psycopg import sql

from django_poolconf import ConnectionFailed, drain, engines, get_engine, pool_stats
from django_poolconf.backends.credentials import ConnectParams
from django_poolconf.health import check_health, runner
from django_poolconf.pool import registry
from tests.conftest import server_pids

SECRET = "s3cr3t-rotated-4b1d"

#: For the settings tests: a dotted path to something that is not callable.
NOT_CALLABLE = "not a function"


def vault_params(alias: str, params: dict[str, Any]) -> dict[str, Any]:
    """A connect_params callable: what a lease from a secrets store would give."""
    VAULT_CALLS.append(alias)
    return {**params, "user": VAULT["user"], "password": VAULT["password"]}


VAULT: dict[str, str] = {}
VAULT_CALLS: list[str] = []


def failing_params(alias: str, params: dict[str, Any]) -> dict[str, Any]:
    raise KeyError(f"lease of {params.get('password')} expired")


def listing_params(alias: str, params: dict[str, Any]) -> Any:
    return ["not", "a", "dict"]


# -- in process ----------------------------------------------------------------------


def test_a_callable_password_is_called_for_each_resolution():
    calls: list[int] = []

    def password() -> str:
        calls.append(1)
        return SECRET

    resolve = ConnectParams("default", password=password)

    assert resolve({"user": "app", "dbname": "app"}) == {
        "user": "app",
        "dbname": "app",
        "password": SECRET,
    }
    resolve({"user": "app"})
    assert len(calls) == 2


def test_connect_params_gets_the_alias_and_the_parameters_and_returns_new_ones():
    VAULT.update(user="lease-user", password=SECRET)
    VAULT_CALLS.clear()
    resolve = ConnectParams(
        "replica", path="tests.backends.test_credentials.vault_params"
    )

    params = resolve({"user": "app", "host": "db", "password": "static"})

    assert params == {"user": "lease-user", "host": "db", "password": SECRET}
    assert VAULT_CALLS == ["replica"]


def test_the_password_callable_runs_before_connect_params():
    seen: list[Any] = []

    def see(alias: str, params: dict[str, Any]) -> dict[str, Any]:
        seen.append(params["password"])
        return params

    resolve = ConnectParams("default", password=lambda: SECRET, function=see)

    resolve({})
    assert seen == [SECRET]


def test_a_failing_password_callable_is_a_connection_failure_naming_the_alias():
    def password() -> str:
        raise RuntimeError(f"vault sealed, token {SECRET}")

    with pytest.raises(ConnectionFailed) as raised:
        ConnectParams("default", password=password)({})

    assert str(raised.value) == (
        "Could not open a connection for 'default': its credentials callable, "
        "DATABASES['default']['PASSWORD'], raised RuntimeError."
    )
    assert isinstance(raised.value, OperationalError)
    assert isinstance(raised.value.__cause__, RuntimeError)  # for the traceback


@pytest.mark.parametrize("returned", [None, 42, b"bytes", ""])
def test_a_password_callable_must_return_a_non_empty_str(returned):
    with pytest.raises(ConnectionFailed) as raised:
        ConnectParams("default", password=lambda: returned)({})

    assert str(raised.value) == (
        "Could not open a connection for 'default': its credentials callable, "
        "DATABASES['default']['PASSWORD'], returned "
        f"{'an empty str' if returned == '' else type(returned).__name__}, not a "
        "password (a non-empty str)."
    )


def test_a_failing_connect_params_names_its_path_never_the_secret():
    path = "tests.backends.test_credentials.failing_params"

    with pytest.raises(ConnectionFailed) as raised:
        ConnectParams("default", path=path)({"password": SECRET})

    assert str(raised.value) == (
        "Could not open a connection for 'default': its credentials callable, "
        f"DATABASES['default']['POOL']['connect_params'] ({path!r}), raised KeyError."
    )
    assert SECRET not in str(raised.value)


def test_connect_params_must_return_a_dict():
    path = "tests.backends.test_credentials.listing_params"

    with pytest.raises(ConnectionFailed, match=r"returned list, not a dict\.\Z"):
        ConnectParams("default", path=path)({})


def test_the_repr_shows_neither_the_callable_nor_what_it_was_built_with():
    token_fetcher = functools.partial(str, SECRET)  # a partial's repr shows its args
    assert SECRET in repr(token_fetcher)

    resolve = ConnectParams("default", password=token_fetcher)

    assert repr(resolve) == "<ConnectParams of 'default': PASSWORD callable>"
    assert SECRET not in repr(resolve) and SECRET not in str(resolve)
    both = ConnectParams("default", password=token_fetcher, path="a.b")
    assert (
        repr(both) == "<ConnectParams of 'default': PASSWORD callable, connect_params>"
    )
    assert repr(ConnectParams("default")) == "<ConnectParams of 'default': nothing>"
    assert not ConnectParams("default")


# -- against the real primary: a password rotated while the pool lends ---------------

ROLE = "poolconf_rotated"


def _write_server_file(admin: psycopg.Connection[Any], path: str, text: str) -> None:
    # As the server's own user: its pg_hba.conf may not be ours to write.
    admin.execute(
        sql.SQL("COPY (SELECT unnest(string_to_array({}, E'\\n'))) TO {}").format(
            sql.Literal(text.rstrip("\n")), sql.Literal(path)
        )
    )


@pytest.fixture
def rotated_role(admin: psycopg.Connection[Any]) -> Iterator[Callable[[str], None]]:
    """A role that must give its password (scram), and a way to change it.

    The embedded servers trust loopback, so one pg_hba.conf line, first, makes the
    server check this role's password, and only this role's.
    """
    admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
    admin.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(ROLE), sql.Literal("first-secret")
        )
    )
    [(hba_file,)] = admin.execute("SHOW hba_file").fetchall()
    [(original,)] = admin.execute("SELECT pg_read_file(%s)", [hba_file]).fetchall()
    _write_server_file(
        admin, hba_file, f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n{original}"
    )
    admin.execute("SELECT pg_reload_conf()")

    def rotate(password: str) -> None:
        admin.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(password)
            )
        )

    try:
        yield rotate
    finally:
        _write_server_file(admin, hba_file, original)
        admin.execute("SELECT pg_reload_conf()")
        connections.close_all()
        engines.dispose_all()
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            [ROLE],
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(ROLE)))
                break
            except psycopg.errors.DependentObjectsStillExist:  # pragma: no cover
                time.sleep(0.05)
            except psycopg.errors.ObjectInUse:  # pragma: no cover - not gone yet
                time.sleep(0.05)


@pytest.fixture
def credentials(pool_options) -> Iterator[Callable[..., None]]:
    """Give the default alias another USER and PASSWORD (and POOL) for one test."""
    settings_dict = connections.settings["default"]
    saved = settings_dict["USER"], settings_dict["PASSWORD"]

    def use(user: str, password: Any, **pool: Any) -> None:
        connections.close_all()
        engines.dispose_all()
        runner._probes.clear()
        settings_dict["USER"], settings_dict["PASSWORD"] = user, password
        pool_options(**pool)

    yield use
    connections.close_all()
    engines.dispose_all()
    runner._probes.clear()
    settings_dict["USER"], settings_dict["PASSWORD"] = saved


def _pid(sa_connection: Any) -> int:
    return int(sa_connection.exec_driver_sql("SELECT pg_backend_pid()").scalar())


def _server_connect(password: str, dbname: str) -> None:
    settings_dict = connections["default"].settings_dict
    psycopg.connect(
        host=settings_dict["HOST"],
        port=settings_dict["PORT"],
        user=ROLE,
        password=password,
        dbname=dbname,
        connect_timeout=5,
    ).close()


@pytest.mark.django_db(transaction=True)
def test_a_rotated_password_reaches_new_connections_and_drain_replaces_old_ones(
    rotated_role, credentials, admin, test_db_name, caplog
):
    secret = ["first-secret"]
    calls: list[str] = []

    def password() -> str:
        calls.append(secret[0])
        return secret[0]

    credentials(ROLE, password, pool_size=4, max_overflow=0, thread_affinity=False)
    caplog.set_level(logging.INFO, logger="django_poolconf")

    # Two physical connections, two calls: one borrowed by Django in a
    # transaction, one idle in the pool.
    connection.ensure_connection()
    with get_engine().connect() as sa_connection:
        idle_pid = _pid(sa_connection)
    lender = registry.lender_of("default")
    assert len(calls) == 2

    rotated_role("second-secret")
    secret[0] = "second-secret"
    with pytest.raises(psycopg.OperationalError):
        _server_connect("first-secret", test_db_name)  # the old secret is refused now

    # Old connections keep serving, without a call: a checkout is not a connect.
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (borrowed_pid,) = cursor.fetchone()
            with get_engine().connect() as sa_connection:
                assert _pid(sa_connection) == idle_pid
                # A new physical connection takes the new secret from the callable.
                with get_engine().connect() as second:
                    new_pid = _pid(second)
            assert calls == ["first-secret", "first-secret", "second-secret"]

            # The settings did not change: the same pool, not a rebuilt one.
            assert registry.lender_of("default") is lender
            assert "replacing its pool" not in caplog.text

            drain("default")
            # Idle ones are closed now; the borrowed one finishes its transaction.
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
        deadline = time.monotonic() + 10
        while {idle_pid, new_pid} & server_pids(
            admin, test_db_name
        ) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert borrowed_pid in server_pids(admin, test_db_name)
        assert not {idle_pid, new_pid} & server_pids(admin, test_db_name)
    connection.close()  # checked in after the drain: closed, not pooled

    deadline = time.monotonic() + 10
    while borrowed_pid in server_pids(admin, test_db_name) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.02)
    assert borrowed_pid not in server_pids(admin, test_db_name)

    # Every later checkout is a new connection, made with the new secret.
    with get_engine().connect() as one, get_engine().connect() as two:
        later = {_pid(one), _pid(two)}
    assert not later & {borrowed_pid, idle_pid, new_pid}
    assert calls[3:] == ["second-secret", "second-secret"]
    # One call per physical connection, never one per checkout.
    assert len(calls) == pool_stats("default").connections_opened


@pytest.mark.django_db(transaction=True)
def test_connect_params_gives_user_and_password_per_new_connection(
    rotated_role, credentials
):
    rotated_role("lease-1")
    VAULT.update(user=ROLE, password="lease-1")
    VAULT_CALLS.clear()
    credentials(
        "nobody",
        "",
        connect_params="tests.backends.test_credentials.vault_params",
        thread_affinity=False,
    )

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone() == (ROLE,)
    connection.close()
    with connection.cursor() as cursor:  # the same connection: no call
        cursor.execute("SELECT 1")
    connection.close()

    assert VAULT_CALLS == ["default"]


@pytest.mark.django_db(transaction=True)
def test_a_failing_credentials_callable_fails_the_checkout_and_the_health_probe(
    credentials,
):
    def password() -> str:
        raise RuntimeError(f"vault sealed {SECRET}")

    credentials("postgres", password)

    with pytest.raises(ConnectionFailed) as raised:
        connection.ensure_connection()
    assert str(raised.value) == (
        "Could not open a connection for 'default': its credentials callable, "
        "DATABASES['default']['PASSWORD'], raised RuntimeError."
    )
    assert pool_stats("default").checked_out == 0  # its room was given back

    report = check_health(["default"], timeout=5, max_age=0)
    health = report["default"]
    assert (health.status, health.reason) == ("unhealthy", "unreachable")
    assert health.error == (
        "Could not open a connection for 'default': its credentials callable, "
        "DATABASES['default']['PASSWORD'], raised RuntimeError."
    )


@pytest.mark.django_db(transaction=True)
def test_a_callable_password_works_for_the_health_probe_and_check(credentials):
    calls: list[int] = []

    def password() -> str:
        calls.append(1)
        return "any"  # the embedded server trusts loopback for postgres

    credentials("postgres", password)

    report = check_health(["default"], timeout=5, max_age=0)
    assert report["default"].status == "healthy"
    assert calls  # the probe's own connection called it
    assert report["default"].target is not None
    assert report["default"].target.masked().startswith("postgres:***@")
    call_command("check")  # no system check is bothered by a callable PASSWORD


@pytest.mark.django_db(transaction=True)
def test_a_callable_password_connects_outside_the_pool_too(credentials):
    calls: list[int] = []

    def password() -> str:
        calls.append(1)
        return "any"

    credentials("postgres", password)
    # A copy with other settings connects outside the pool, as Django would.
    other = connection.copy()
    other.settings_dict = {**other.settings_dict, "OPTIONS": {"pool": False}}
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        other.close()
    assert calls == [1]


# -- review of issue 14 -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_slow_password_callable_blocks_no_other_checkout_or_checkin(credentials):
    # A secrets store that takes its time (Vault, an IAM token) must hold up only the
    # checkout that opens a new connection: not the returns and the checkouts of
    # connections already open, which need no secret.
    import threading

    slow = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    def password() -> str:
        calls.append(1)
        if slow.is_set():
            release.wait(30)
        return "any"

    credentials("postgres", password, pool_size=2, max_overflow=0, pool_timeout=30)
    engine = get_engine("default")
    held = engine.connect()  # the pool's one connection so far
    slow.set()
    opener = threading.Thread(target=lambda: engine.connect().close())
    opener.start()
    while len(calls) < 2:  # the opener is in the callable
        time.sleep(0.01)
    served: list[int] = []

    def others() -> None:
        held.close()  # a checkin
        for _ in range(5):  # checkouts of the open connection
            with engine.connect() as again:
                served.append(int(again.exec_driver_sql("SELECT 1").scalar()))
        pool_stats("default")

    other = threading.Thread(target=others)
    other.start()
    other.join(10)
    finished = not other.is_alive()
    release.set()
    other.join(30)
    opener.join(30)
    assert finished, "a checkin or checkout waited for the password callable"
    assert served == [1] * 5
    assert len(calls) == 2  # once per new connection, never per checkout
