"""The pooled backend behind a real PgBouncer, in transaction and in session mode.

The ``pgbouncer`` fixture (this package's conftest) starts one in front of the primary
and points the default alias at it with ``POOL["pgbouncer"]`` naming the mode.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError, connection, connections, transaction

from tests.conftest import RESET_STATEMENTS, wsgi_get
from tests.health.test_runner import use_health
from tests.pgbouncer import PgBouncer
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True)


def _through(bouncer: PgBouncer) -> psycopg.Connection[Any]:
    """A plain client connection through PgBouncer, outside the pool."""
    settings_dict = connections["default"].settings_dict
    return psycopg.connect(
        host="127.0.0.1",
        port=bouncer.port,
        user=settings_dict["USER"],
        dbname=settings_dict["NAME"],
        autocommit=True,
    )


def test_orm_and_atomic(pgbouncer):
    Item.objects.create(name="a")
    with transaction.atomic():
        Item.objects.create(name="b")
    with pytest.raises(RuntimeError), transaction.atomic():
        Item.objects.create(name="c")
        raise RuntimeError("roll back")
    assert sorted(Item.objects.values_list("name", flat=True)) == ["a", "b"]
    with transaction.atomic():
        Item.objects.select_for_update().filter(name="a").update(name="a2")
    assert Item.objects.filter(name="a2").exists()
    # The session's time zone holds although no "options" reach PgBouncer.
    with connection.cursor() as cursor:
        cursor.execute("SHOW TimeZone")
        assert cursor.fetchone()[0] == "UTC"


def test_iterator_while_another_client_takes_the_server_connection(pgbouncer):
    Item.objects.bulk_create(Item(name=f"i{n}") for n in range(50))
    other = _through(pgbouncer)
    try:
        names = []
        for n, item in enumerate(Item.objects.order_by("id").iterator(chunk_size=10)):
            names.append(item.name)
            if n == 0:
                # Holds a server connection, most likely the one the first chunk
                # used (PgBouncer reuses the last released one first).
                other.execute("BEGIN")
                other.execute("SELECT 1")
        assert names == [f"i{n}" for n in range(50)]
    finally:
        other.close()


def test_repeated_statements_while_server_connections_change(pgbouncer, driver_options):
    # Server-side binding: psycopg prepares a statement run five times (Django's
    # default client-side binding prepares nothing).
    driver_options(server_side_binding=True)
    Item.objects.create(name="a")
    other = _through(pgbouncer)
    try:
        for n in range(20):
            # Behind PgBouncer in transaction mode the next run may land on a
            # server connection that never saw the statement prepared.
            assert Item.objects.filter(name="a").count() == 1
            if n % 2:
                other.execute("BEGIN")
                other.execute("SELECT 1")
            else:
                other.execute("COMMIT")
        # A statement prepared on one server connection is unknown to the next:
        # Django's default prepares nothing (W012 warns when OPTIONS asks for it).
        assert connection.connection.prepare_threshold is None
    finally:
        other.close()


def test_return_resets_the_session_in_session_mode_only(pgbouncer, admin, test_db_name):
    wsgi_get("/item/")
    admin.execute("SELECT pg_stat_statements_reset()")
    for _ in range(10):
        # A session change, which the reset undoes in session mode. PgBouncer tracks
        # application_name and sets it on each server connection it lends.
        response = wsgi_get("/sql/", q="SET application_name = 'behind_pgbouncer'")
        assert response.status == 200
    rows = admin.execute(
        "SELECT query, calls FROM pg_stat_statements s JOIN pg_database d "
        "ON d.oid = s.dbid WHERE d.datname = %s",
        [test_db_name],
    ).fetchall()
    resets = sum(calls for query, calls in rows if query in RESET_STATEMENTS)
    if pgbouncer.mode == "transaction":
        # The server connection is shared between transactions: there is no session
        # of ours to reset, only the transaction to roll back.
        assert resets == 0
    else:
        assert resets >= 10


def test_32_threads_200_request_cycles(pgbouncer):
    Item.objects.create(name="a")
    errors: list[BaseException] = []
    statuses: list[int] = []

    def work() -> None:
        try:
            for _ in range(200):
                statuses.append(wsgi_get("/item/").status)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors[:3]
    assert statuses.count(200) == 32 * 200


def test_pgbouncer_restart_is_survived(pgbouncer):
    Item.objects.create(name="a")
    for _ in range(3):
        assert wsgi_get("/item/").status == 200
    pgbouncer.stop()
    pgbouncer.start()
    # Every request after PgBouncer is back succeeds: the pool's idle connections to
    # the old process are found dead on checkout and replaced.
    started = time.monotonic()
    assert wsgi_get("/item/").status == 200
    first = time.monotonic() - started
    for _ in range(19):
        assert wsgi_get("/item/").status == 200
    assert time.monotonic() - started < 60
    print(
        f"PgBouncer ({pgbouncer.mode}) restarted: first request {first * 1000:.0f} ms"
    )


def test_prepare_threshold_is_dropped_in_transaction_mode_unless_declared(
    pgbouncer, driver_options
):
    # Server-side binding, and psycopg prepares a statement at its first run.
    driver_options(server_side_binding=True, prepare_threshold=0)
    Item.objects.create(name="a")
    other = _through(pgbouncer)
    try:
        for n in range(20):
            # In transaction mode the next run may land on a server connection
            # that never saw the statement prepared: none is prepared there.
            assert Item.objects.filter(name="a").count() == 1
            if n % 2:
                other.execute("BEGIN")
                other.execute("SELECT 1")
            else:
                other.execute("COMMIT")
    finally:
        other.close()
    expected = None if pgbouncer.mode == "transaction" else 0
    assert connection.connection.prepare_threshold == expected


def test_declared_prepared_statement_support_keeps_prepare_threshold(
    pgbouncer, pool_options, driver_options
):
    # PgBouncer 1.21+ with max_prepared_statements keeps track of them.
    pool_options(pgbouncer_prepared_statements=True)
    driver_options(prepare_threshold=7)

    assert Item.objects.count() == 0

    assert connection.connection.prepare_threshold == 7


def test_statement_timeout_set_on_the_server_holds_in_transaction_mode(
    admin, pgbouncer, test_db_name
):
    # What W013 advises: the server applies it to every server connection that
    # PgBouncer opens, whichever transaction each one serves.
    admin.execute(f'ALTER DATABASE "{test_db_name}" SET statement_timeout = 200')
    try:
        pgbouncer.stop()  # its server connections predate the setting
        pgbouncer.start()
        connection.close()
        other = _through(pgbouncer)
        try:
            for n in range(6):
                if n % 2:
                    other.execute("BEGIN")
                    other.execute("SELECT 1")
                else:
                    other.execute("COMMIT")
                response = wsgi_get("/sql/", q="SHOW statement_timeout")
                assert response.json()["row"] == ["200ms"]
                with (
                    pytest.raises(OperationalError, match="statement timeout"),
                    connection.cursor() as cursor,
                ):
                    cursor.execute("SELECT pg_sleep(2)")
                connection.close()
        finally:
            other.close()
    finally:
        admin.execute(f'ALTER DATABASE "{test_db_name}" RESET statement_timeout')


def test_health_view_through_pgbouncer(pgbouncer):
    wsgi_get("/item/")
    fresh = use_health()  # no probe result reused
    fresh.enable()
    try:
        _health_view_through(pgbouncer)
    finally:
        fresh.disable()


def _health_view_through(pgbouncer: PgBouncer) -> None:

    payload = wsgi_get("/health/db").json()

    assert payload["databases"]["default"]["status"] == "healthy"
    assert payload["databases"]["default"]["latency_ms"] is not None
    pgbouncer.stop()
    response = wsgi_get("/health/db")
    assert response.status == 503
    assert response.json()["databases"]["default"]["status"] == "unhealthy"
    pgbouncer.start()
    assert wsgi_get("/health/db").json()["databases"]["default"]["status"] == "healthy"


def test_statement_timeout_holds_in_session_mode_only(pgbouncer, pool_options):
    pool_options(statement_timeout=1234)
    # In transaction mode no session setting holds: not applied (W013 says so).
    expected = "1234ms" if pgbouncer.mode == "session" else "0"
    for _ in range(3):
        # A session change between them: the reset on return restores the setting.
        assert wsgi_get("/sql/", q="SET application_name = 'changed'").status == 200
        response = wsgi_get("/sql/", q="SHOW statement_timeout")
        assert response.status == 200
        assert response.json()["row"] == [expected]


# The checks: settings that break behind PgBouncer.


def _check_ids(pool, **settings):
    from django_poolconf.conf.pool import validate_alias
    from tests.conf.conftest import pooled

    problems = validate_alias("default", pooled(POOL=pool, **settings), poolconf={})[1]
    return [problem.id for problem in problems]


def test_checks_behind_pgbouncer_in_transaction_mode():
    transaction = {"pgbouncer": "transaction"}
    assert _check_ids(transaction) == []
    assert _check_ids(transaction, OPTIONS={"options": "-c work_mem=64MB"}) == ["W011"]
    assert _check_ids(transaction, OPTIONS={"prepare_threshold": 5}) == ["W012"]
    assert _check_ids(transaction, OPTIONS={"prepare_threshold": None}) == []
    assert _check_ids({**transaction, "statement_timeout": 5000}) == ["W013"]
    assert _check_ids({**transaction, "reset_on_return": "full"}) == ["W014"]
    declared = {**transaction, "pgbouncer_prepared_statements": True}
    assert _check_ids(declared, OPTIONS={"prepare_threshold": 5}) == []


def test_pgbouncer_admin_must_name_the_admin_console_of_a_declared_pgbouncer():
    console = "postgresql://stats:secret-pw@pgbouncer.internal:6432/pgbouncer"
    assert _check_ids({"pgbouncer": "transaction", "pgbouncer_admin": console}) == []
    assert _check_ids({"pgbouncer_admin": console}) == ["W015"]
    other = console.replace("/pgbouncer", "/app")
    assert _check_ids({"pgbouncer": "session", "pgbouncer_admin": other}) == ["E019"]
    assert _check_ids(
        {"pgbouncer": "session", "pgbouncer_admin": "postgresql://["}
    ) == ["E019"]
    assert _check_ids({"pgbouncer": "session", "pgbouncer_admin": 5}) == ["E003"]
    assert _check_ids({"pgbouncer_admin": "dbname=app"}) == ["E019"]


@pytest.mark.parametrize(
    "pool",
    [
        {"pgbouncer_admin": "postgresql://stats:secret-pw@h:6432/pgbouncer"},
        {"pgbouncer_admin": "postgresql://stats:secret-pw@h:6432/app"},
        {
            "pgbouncer": "session",
            "pgbouncer_admin": "postgresql://stats:secret-pw@h/app",
        },
        {
            "pgbouncer": "session",
            "pgbouncer_admin": "host=h password=secret-pw dbname=x",
        },
        {
            "pgbouncer": "session",
            "pgbouncer_admin": "postgresql://u:secret-pw@[h/pgbouncer",
        },
    ],
)
def test_pgbouncer_admin_problems_never_show_its_password(pool):
    from django_poolconf.conf.pool import validate_alias
    from tests.conf.conftest import pooled

    problems = validate_alias("default", pooled(POOL=pool), poolconf={})[1]
    assert problems
    assert not any("secret-pw" in str(problem) for problem in problems)


@pytest.mark.parametrize(
    "value",
    [
        b"postgresql://stats:secret-pw@h:6432/pgbouncer",
        {"PASSWORD": "secret-pw", "NAME": "pgbouncer"},
        ["postgresql://stats:secret-pw@h:6432/pgbouncer"],
    ],
)
def test_pgbouncer_admin_of_another_type_is_shown_by_its_type_only(value):
    # Review 16: E003 repeated the value (and so its password) in manage.py check,
    # poolstatus, the health view's detail and the ImproperlyConfigured at connect.
    from django_poolconf.conf.pool import pool_settings, validate_alias
    from tests.conf.conftest import pooled

    pool = {"pgbouncer": "transaction", "pgbouncer_admin": value}
    [problem] = validate_alias("default", pooled(POOL=pool), poolconf={})[1]
    assert problem.id == "E003"
    assert "secret-pw" not in str(problem)
    assert f"got a {type(value).__name__}" in problem.msg
    with pytest.raises(ImproperlyConfigured) as raised:
        pool_settings("default", pooled(POOL=pool), poolconf={})
    assert "secret-pw" not in str(raised.value)


@pytest.mark.parametrize(
    "pool",
    [
        # The console's URL given to the wrong key: E004 shows the value.
        {"pgbouncer": "postgresql://stats:secret-pw@h:6432/pgbouncer"},
        {"pgbouncer": "host=h password=secret-pw dbname=pgbouncer"},
        {"connect_params": "postgresql://stats:secret-pw@h:6432/pgbouncer"},
        {"reset_on_return": {"password": "secret-pw"}},
    ],
)
def test_no_pool_problem_shows_a_password_given_to_another_key(pool):
    from django_poolconf.conf.pool import validate_alias
    from tests.conf.conftest import pooled

    problems = validate_alias("default", pooled(POOL=pool), poolconf={})[1]
    assert problems
    assert not any("secret-pw" in str(problem) for problem in problems)


def test_pool_settings_repr_hides_pgbouncer_admin():
    from django_poolconf.conf.pool import pool_settings
    from tests.conf.conftest import pooled

    console = "postgresql://stats:secret-pw@h:6432/pgbouncer"
    settings = pool_settings(
        "default",
        pooled(POOL={"pgbouncer": "session", "pgbouncer_admin": console}),
        poolconf={},
    )
    assert settings.pgbouncer_admin == console
    assert "secret-pw" not in repr(settings)


def test_checks_behind_pgbouncer_in_session_mode_and_without():
    session = {"pgbouncer": "session"}
    assert _check_ids(session, OPTIONS={"options": "-c work_mem=64MB"}) == ["W011"]
    assert (
        _check_ids(
            {**session, "statement_timeout": 5000, "reset_on_return": "full"},
            OPTIONS={"prepare_threshold": 5},
        )
        == []
    )
    assert (
        _check_ids({"statement_timeout": 5000}, OPTIONS={"options": "-c work_mem=64MB"})
        == []
    )
