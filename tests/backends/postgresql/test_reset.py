"""Nothing a borrower leaves on its connection reaches the next borrower.

Each test runs on a pool of one connection, so the next borrower is the same server
backend (the tests check its pid), and compares what that borrower finds with what a
borrower found before anyone changed the session.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection, connections
from psycopg.rows import dict_row
from psycopg.types.numeric import IntLoader
from sqlalchemy import text

from django_poolconf import engines, get_engine

pytestmark = pytest.mark.django_db(transaction=True)

_OBJECTS = """
CREATE OR REPLACE FUNCTION poolconf_set_tenant(tenant int) RETURNS void
    LANGUAGE plpgsql AS $$BEGIN PERFORM set_config('app.tenant', tenant::text, false); END$$;
CREATE OR REPLACE FUNCTION poolconf_exec(statement text) RETURNS void
    LANGUAGE plpgsql AS $$BEGIN EXECUTE statement; END$$;
CREATE OR REPLACE FUNCTION poolconf_lock() RETURNS void
    LANGUAGE plpgsql AS $$BEGIN PERFORM pg_advisory_lock(4242); END$$;
CREATE OR REPLACE PROCEDURE poolconf_proc()
    LANGUAGE plpgsql AS $$BEGIN PERFORM set_config('app.tenant', '99', false); END$$;
CREATE SEQUENCE IF NOT EXISTS poolconf_seq;
DO $$BEGIN CREATE ROLE poolconf_tenant; EXCEPTION WHEN duplicate_object THEN NULL; END$$;
"""

# What a borrower finds of the server session, in one query.
_SERVER_STATE = """
SELECT
    pg_backend_pid(),
    -- A custom setting reads '' once defined in the session, even after a reset.
    nullif(current_setting('app.tenant', true), ''),
    current_setting('search_path'),
    current_setting('statement_timeout'),
    current_user::text,
    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
    (SELECT count(*) FROM pg_listening_channels()),
    (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()),
    (SELECT count(*) FROM pg_proc WHERE pronamespace = pg_my_temp_schema()),
    (SELECT count(*) FROM pg_prepared_statements),
    (SELECT count(*) FROM pg_cursors)
"""


def _admin(dbname: str | None = None) -> psycopg.Connection[Any]:
    """A plain connection to the test database (or ``dbname``), outside any pool."""
    settings_dict = connections["default"].settings_dict
    return psycopg.connect(
        host=settings_dict["HOST"],
        port=settings_dict["PORT"],
        user=settings_dict["USER"],
        dbname=dbname or settings_dict["NAME"],
        autocommit=True,
    )


@pytest.fixture(autouse=True)
def one_connection(pool_options: Callable[..., None]) -> Iterator[None]:
    connections.close_all()
    engines.dispose_all()
    with _admin() as admin:
        admin.execute(_OBJECTS)
    pool_options(pool_size=1, max_overflow=0, pool_timeout=5)
    yield
    connection.close()


def _sql(query: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(query)


def _server_state() -> tuple[Any, ...]:
    with connection.cursor() as cursor:
        cursor.execute(_SERVER_STATE)
        row = cursor.fetchone()
    # currval() works only after nextval() in the same session.
    with connection.cursor() as cursor:
        try:
            cursor.execute("SELECT currval('poolconf_seq')")
            current = cursor.fetchone()[0]
        except Exception:  # noqa: BLE001 - "not yet defined in this session"
            current = None
    connection.close()
    assert row is not None
    return (*row, current)


def _via_engine() -> None:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT poolconf_set_tenant(43)"))
        conn.execute(text("SELECT poolconf_exec('SET search_path = pg_catalog')"))
        conn.commit()


def _via_copy() -> None:
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(
            "COPY (SELECT set_config('search_path', 'pg_catalog', false)) TO STDOUT"
        ) as copy,
    ):
        for _ in copy:
            pass


def _via_stream() -> None:
    with connection.cursor() as cursor:
        for _ in cursor.cursor.stream("SELECT set_config('app.tenant', '44', false)"):
            pass


def _via_raw_connection() -> None:
    connection.ensure_connection()
    connection.connection.execute("SELECT set_config('app.tenant', '45', false)")


def _via_pgconn() -> None:
    connection.ensure_connection()
    result = connection.connection.pgconn.exec_(b"SET search_path = pg_catalog")
    assert result.status == psycopg.pq.ExecStatus.COMMAND_OK


SESSION_CHANGES: dict[str, Callable[[], None]] = {
    "function calling set_config": lambda: _sql("SELECT poolconf_set_tenant(42)"),
    "function EXECUTE SET": lambda: _sql(
        "SELECT poolconf_exec('SET search_path = pg_catalog')"
    ),
    "function EXECUTE SET ROLE": lambda: _sql(
        "SELECT poolconf_exec('SET ROLE poolconf_tenant')"
    ),
    "function taking an advisory lock": lambda: _sql("SELECT poolconf_lock()"),
    "function running LISTEN": lambda: _sql(
        "SELECT poolconf_exec('LISTEN poolconf_channel')"
    ),
    "function creating a temp table": lambda: _sql(
        "SELECT poolconf_exec('CREATE TEMP TABLE poolconf_leak (x int)')"
    ),
    "CALL": lambda: _sql("CALL poolconf_proc()"),
    "nextval": lambda: _sql("SELECT nextval('poolconf_seq')"),
    "set_config with a comment": lambda: _sql(
        "SELECT set_config/**/('app.tenant', '7', false)"
    ),
    "UPDATE pg_settings": lambda: _sql(
        "UPDATE pg_settings SET setting = '1234' WHERE name = 'statement_timeout'"
    ),
    "CREATE TABLE pg_temp": lambda: _sql("CREATE TABLE pg_temp.poolconf_leak (x int)"),
    "temporary function": lambda: _sql(
        "CREATE FUNCTION pg_temp.poolconf_leak() RETURNS int LANGUAGE sql AS 'SELECT 1'"
    ),
    "quoted advisory lock": lambda: _sql('SELECT "pg_advisory_lock"(42)'),
    "DO block": lambda: _sql(
        "DO $$BEGIN EXECUTE 'SET search_path = pg_catalog'; END$$"
    ),
    "SET": lambda: _sql("SET statement_timeout = 4321"),
    "SET ROLE": lambda: _sql("SET ROLE poolconf_tenant"),
    "PREPARE": lambda: _sql("PREPARE poolconf_statement AS SELECT 1"),
    "WITH HOLD cursor": lambda: _sql(
        "DECLARE poolconf_cursor CURSOR WITH HOLD FOR SELECT 1"
    ),
    "get_engine()": _via_engine,
    "cursor.copy()": _via_copy,
    "cursor.stream()": _via_stream,
    "connection.connection": _via_raw_connection,
    "pgconn.exec_()": _via_pgconn,
}


@pytest.mark.parametrize("change", SESSION_CHANGES.values(), ids=SESSION_CHANGES)
def test_server_session_state_does_not_reach_the_next_borrower(
    change: Callable[[], None],
) -> None:
    before = _server_state()

    change()
    connection.close()
    after = _server_state()

    assert after[0] == before[0]  # the same server backend
    assert after == before


@pytest.mark.parametrize("change", SESSION_CHANGES.values(), ids=SESSION_CHANGES)
def test_session_state_does_not_reach_the_next_request(
    change: Callable[[], None], get: Callable[..., Any]
) -> None:
    # The end of a request parks the connection with the thread (thread_affinity),
    # and the next request takes it back: the reset must hold on that path too.
    from django.core.signals import request_finished, request_started

    before = _server_state()
    request_started.send(sender=None)
    change()
    request_finished.send(sender=None)
    request_started.send(sender=None)
    after = _server_state()
    request_finished.send(sender=None)

    assert after[0] == before[0]
    assert after == before


def test_row_factory_does_not_reach_the_next_borrower() -> None:
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    connection.connection.row_factory = dict_row
    connection.close()

    connection.ensure_connection()
    assert connection.connection.info.backend_pid == pid
    assert connection.connection.execute("SELECT 1 AS one").fetchone() == (1,)
    with connection.cursor() as cursor:  # Django's own cursors work as well
        cursor.execute("SELECT 1 AS one")
        assert cursor.fetchone() == (1,)


def test_cursor_factory_does_not_reach_the_next_borrower() -> None:
    connection.ensure_connection()
    factory = connection.connection.cursor_factory
    connection.connection.cursor_factory = psycopg.ClientCursor
    connection.close()

    connection.ensure_connection()
    assert connection.connection.cursor_factory is factory


def test_notice_handler_does_not_reach_the_next_borrower() -> None:
    heard: list[str] = []
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    connection.connection.add_notice_handler(
        lambda diagnostic: heard.append(diagnostic.message_primary or "")
    )
    connection.close()

    with connection.cursor() as cursor:
        assert connection.connection.info.backend_pid == pid
        cursor.execute("DO $$BEGIN RAISE NOTICE 'for the next borrower'; END$$")

    assert heard == []


def test_notify_handler_does_not_reach_the_next_borrower() -> None:
    heard: list[str] = []
    connection.ensure_connection()
    connection.connection.add_notify_handler(
        lambda notify: heard.append(notify.payload)
    )
    connection.close()

    with connection.cursor() as cursor:
        cursor.execute("LISTEN poolconf_next")
        cursor.execute("NOTIFY poolconf_next, 'for the next borrower'")
        cursor.execute("SELECT 1")
        cursor.execute("UNLISTEN poolconf_next")

    assert heard == []


class _TextIntLoader(IntLoader):
    def load(self, data: Any) -> Any:
        return f"text:{bytes(data).decode()}"


def test_adapters_do_not_reach_the_next_borrower() -> None:
    connection.ensure_connection()
    connection.connection.adapters.register_loader("int4", _TextIntLoader)
    assert connection.connection.execute("SELECT 1").fetchone() == ("text:1",)
    connection.close()

    connection.ensure_connection()
    assert connection.connection.execute("SELECT 1").fetchone() == (1,)


def test_prepare_threshold_does_not_reach_the_next_borrower() -> None:
    connection.ensure_connection()
    connection.connection.prepare_threshold = 0  # prepare every statement
    connection.close()

    with connection.cursor() as cursor:
        for _ in range(3):
            cursor.execute("SELECT 1")
        cursor.execute("SELECT count(*) FROM pg_prepared_statements")
        assert cursor.fetchone() == (0,)


def test_custom_setting_reads_as_empty_not_null_after_a_reset() -> None:
    # The documented trap of RESET: a placeholder setting, once defined in a session,
    # reads '' afterwards. The documented policy form handles both.
    _sql("SELECT set_config('app.tenant', '42', false)")
    connection.close()

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('app.tenant', true),"
            " nullif(current_setting('app.tenant', true), '')::int"
        )
        assert cursor.fetchone() == ("", None)


@pytest.mark.parametrize("threshold", [1, 2])
@pytest.mark.parametrize("policy", ["auto", "rollback", "full"])
def test_prepared_statements_survive_every_reset_policy(
    policy: str,
    threshold: int,
    get: Callable[..., Any],
    pool_options: Callable[..., None],
    driver_options: Callable[..., None],
) -> None:
    pool_options(pool_size=1, max_overflow=0, pool_timeout=5, reset_on_return=policy)
    driver_options(prepare_threshold=threshold, server_side_binding=True)
    session_changes = [
        "SELECT set_config('app.tenant', '1', false)",
        "SET statement_timeout = 5000",
        "SELECT poolconf_set_tenant(2)",
    ]
    statuses = []
    for number in range(200):
        if number % 4 == 0:
            response = get("/sql/", q=session_changes[number % 3])
        elif number % 4 == 2:
            response = get("/sql/", q="SELECT count(*) FROM testapp_item")
        else:
            response = get("/item/")
        statuses.append(response.status)

    assert statuses == [200] * 200


def _notify(channel: str, payload: str) -> None:
    with _admin() as admin:
        admin.execute(f"NOTIFY {channel}, '{payload}'")


def test_notification_received_by_one_borrower_does_not_reach_the_next() -> None:
    # psycopg keeps a notification that arrived with no handler set, for notifies().
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    connection.connection.execute("LISTEN poolconf_secret")
    _notify("poolconf_secret", "tenant 42")
    time.sleep(0.2)  # let it reach the socket before the next query reads it
    connection.connection.execute("SELECT 1")
    connection.close()

    connection.ensure_connection()
    assert connection.connection.info.backend_pid == pid
    raw = connection.connection
    if "timeout" in inspect.signature(raw.notifies).parameters:
        heard = [n.payload for n in raw.notifies(timeout=0.2)]
    else:  # psycopg < 3.2 keeps no backlog: a notification goes to handlers only
        heard = []
        raw.add_notify_handler(lambda n: heard.append(n.payload))
        raw.execute("SELECT 1")
    assert heard == []


def test_notification_pending_in_libpq_does_not_reach_the_next_borrower() -> None:
    # A notification that arrived after the borrower's last query, still unread.
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    connection.connection.execute("LISTEN poolconf_secret")
    _notify("poolconf_secret", "tenant 42")
    time.sleep(0.2)
    connection.close()

    heard: list[str] = []
    connection.ensure_connection()
    assert connection.connection.info.backend_pid == pid
    connection.connection.add_notify_handler(lambda n: heard.append(n.payload))
    connection.connection.execute("SELECT 1")
    assert heard == []


def test_full_policy_reads_no_baseline(
    get: Callable[..., Any], pool_options: Callable[..., None]
) -> None:
    # "full" sets Django's setup up again after each DISCARD ALL: the query that reads
    # the setup's settings for "auto" would be one more round trip per request.
    pool_options(pool_size=1, max_overflow=0, reset_on_return="full")
    get("/item/")
    with _admin("postgres") as admin:
        admin.execute("SELECT pg_stat_statements_reset()")
        for _ in range(5):
            get("/item/")
        rows = admin.execute(
            "SELECT query, calls FROM pg_stat_statements s JOIN pg_database d "
            "ON d.oid = s.dbid WHERE d.datname = %s",
            [connections["default"].settings_dict["NAME"]],
        ).fetchall()
    statements = {query: calls for query, calls in rows if "testapp_item" not in query}
    assert statements == {"DISCARD ALL": 5}, statements
