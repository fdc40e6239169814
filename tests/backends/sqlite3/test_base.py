"""The pooled SQLite backend, on real database files in temporary directories."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from io import StringIO
from pathlib import Path
from typing import Any

import django
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import DatabaseError, connections, transaction
from django.db.utils import OperationalError
from sqlalchemy import text

from django_poolconf import PoolTimeout, engines, get_engine, signals
from django_poolconf.health import check_health
from tests.backends.sqlite3.conftest import Configure
from tests.testapp.models import Item


def _in_thread(work: Any) -> Any:
    """Run ``work()`` in another thread, with its own Django connections; return or raise its result."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller
            outcome["error"] = error
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def _in_child(work: Any) -> int:
    from tests.pool.test_registry import _in_child as run

    return run(work)


def _scalar(alias: str, sql: str) -> Any:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


# -- the connection cycle ---------------------------------------------------------


def test_returned_connection_is_lent_again(sqlite_alias: Configure):
    alias = sqlite_alias()
    wrapper = connections[alias]
    assert _scalar(alias, "SELECT 1") == 1
    first = wrapper.connection
    wrapper.close()

    assert _scalar(alias, "SELECT 2") == 2
    assert wrapper.connection is first
    # Another thread, after this one gave it back, borrows the same connection.
    wrapper.close()
    assert _in_thread(
        lambda: _scalar(alias, "SELECT 3") == 3 and id(connections[alias].connection)
    ) == id(first)
    stats = engines.stats_of(alias)
    assert stats is not None
    assert stats.connections_opened == 1
    assert stats.checked_out == 0


def test_django_setup_runs_once_per_physical_connection(sqlite_alias: Configure):
    # OPTIONS["init_command"] is Django 5.1's; before, sqlite3.connect() refuses it.
    init = django.VERSION >= (5, 1)
    alias = sqlite_alias(
        OPTIONS={"init_command": "PRAGMA synchronous = OFF; PRAGMA cache_size = -4321"}
        if init
        else {}
    )
    created: list[object] = []

    def receiver(sender: Any, connection: Any, **kwargs: Any) -> None:
        created.append(connection.connection)

    signals.physical_connection_created.connect(receiver)
    try:
        for _ in range(3):
            # Django's functions are registered: the ORM's date lookups use them.
            assert (
                _scalar(alias, "SELECT django_date_extract('year', '2024-05-06')")
                == 2024
            )
            connections[alias].close()
    finally:
        signals.physical_connection_created.disconnect(receiver)
    assert len(created) == 1
    assert _scalar(alias, "PRAGMA foreign_keys") == 1
    if init:
        assert _scalar(alias, "PRAGMA synchronous") == 0
        assert _scalar(alias, "PRAGMA cache_size") == -4321


def test_exhausted_pool_raises_pool_timeout(sqlite_alias: Configure):
    alias = sqlite_alias({"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.1})
    connections[alias].ensure_connection()

    with pytest.raises(PoolTimeout) as raised:
        _in_thread(lambda: connections[alias].ensure_connection())

    assert isinstance(raised.value, OperationalError)
    assert str(raised.value) == (
        f"No connection for {alias!r} within 0.1 s (pool_size=1, max_overflow=0)."
    )
    connections[alias].close()
    assert _in_thread(lambda: _scalar(alias, "SELECT 1")) == 1


def test_wrapper_is_not_shared_between_threads(sqlite_alias: Configure):
    alias = sqlite_alias()
    wrapper = connections[alias]
    wrapper.ensure_connection()

    def use_other_threads_wrapper() -> None:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")

    # Django's own check, per borrower: the driver's check_same_thread is off.
    with pytest.raises(DatabaseError, match="can only be used in that same thread"):
        _in_thread(use_other_threads_wrapper)


# -- a dirty return -----------------------------------------------------------------


def test_open_transaction_is_rolled_back_on_return(sqlite_alias: Configure):
    alias = sqlite_alias({"pool_size": 1})
    wrapper = connections[alias]
    with wrapper.cursor() as cursor:
        cursor.execute("CREATE TABLE t (x INTEGER)")
        cursor.execute("BEGIN")  # behind Django's back, in autocommit
        cursor.execute("INSERT INTO t VALUES (1)")
    wrapper.close()

    def next_borrower() -> tuple[int, bool]:
        return _scalar(alias, "SELECT count(*) FROM t"), connections[
            alias
        ].connection.in_transaction

    assert _in_thread(next_borrower) == (0, False)
    # The write lock went with the transaction: another connection writes at once.
    other = sqlite3.connect(connections.settings[alias]["NAME"], timeout=0)
    with other:
        other.execute("INSERT INTO t VALUES (2)")
    other.close()


def test_session_state_is_reset_on_return(sqlite_alias: Configure, tmp_path: Path):
    alias = sqlite_alias({"pool_size": 1})

    def set_up(sender: Any, connection: Any, **kwargs: Any) -> None:
        # Part of the baseline, as Django's own setup is.
        connection.connection.execute("PRAGMA synchronous = OFF")

    signals.physical_connection_created.connect(set_up)
    try:
        connections[alias].ensure_connection()
    finally:
        signals.physical_connection_created.disconnect(set_up)
    wrapper = connections[alias]
    traced: list[str] = []
    with wrapper.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE scratch (x INTEGER)")
        cursor.execute("CREATE TEMP VIEW scratch_view AS SELECT 1")
        cursor.execute("ATTACH DATABASE %s AS other", [str(tmp_path / "other.sqlite3")])
        cursor.execute("PRAGMA foreign_keys = OFF")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA busy_timeout = 1")
        cursor.execute("PRAGMA query_only = ON")
    driver = wrapper.connection
    driver.create_function("borrowers_own", 0, lambda: 1)
    driver.set_trace_callback(traced.append)
    driver.row_factory = sqlite3.Row
    wrapper.close()

    def next_borrower() -> Any:
        connection = connections[alias]
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT (SELECT count(*) FROM temp.sqlite_master),"
                " (SELECT count(*) FROM pragma_database_list),"
                " (SELECT foreign_keys FROM pragma_foreign_keys()),"
                " (SELECT synchronous FROM pragma_synchronous()),"
                " (SELECT timeout FROM pragma_busy_timeout()),"
                " (SELECT query_only FROM pragma_query_only())"
            )
            row = tuple(cursor.fetchone())
            with pytest.raises(
                DatabaseError, match="user-defined function raised exception"
            ):
                cursor.execute("SELECT borrowers_own()")
        return row, connection.connection.row_factory, id(connection.connection)

    traced.clear()
    row, row_factory, used = _in_thread(next_borrower)
    assert used == id(driver)
    # No temp objects, main and temp only, the baseline's PRAGMAs (init_command's too).
    assert row == (0, 2, 1, 0, 5000, 0)
    assert row_factory is None
    assert traced == []


def test_rollback_policy_rolls_back_only(sqlite_alias: Configure):
    alias = sqlite_alias({"pool_size": 1, "reset_on_return": "rollback"})
    with connections[alias].cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE kept (x INTEGER)")
        cursor.execute("BEGIN")
    connections[alias].close()

    assert _in_thread(
        lambda: (
            _scalar(alias, "SELECT count(*) FROM temp.sqlite_master"),
            connections[alias].connection.in_transaction,
        )
    ) == (1, False)


def test_connection_to_a_replaced_file_is_not_lent(sqlite_alias: Configure):
    alias = sqlite_alias({"pool_size": 1})  # returned just now: no ping, a stat()
    path = connections.settings[alias]["NAME"]
    with connections[alias].cursor() as cursor:
        cursor.execute("CREATE TABLE old (x INTEGER)")
    first = connections[alias].connection
    connections[alias].close()
    os.remove(path)  # a deploy that swaps the file, say

    assert _scalar(alias, "SELECT count(*) FROM sqlite_master WHERE name = 'old'") == 0
    assert connections[alias].connection is not first


# -- processes ----------------------------------------------------------------------


def test_forked_child_never_uses_the_parents_connections(sqlite_alias: Configure):
    alias = sqlite_alias()
    with connections[alias].cursor() as cursor:
        cursor.execute("CREATE TABLE t (x INTEGER)")
    idle = get_engine(alias).raw_connection()  # an idle one in the pool, too
    idle_driver = idle.dbapi_connection
    idle.close()
    wrapper = connections[alias]
    parent = wrapper.connection
    # The parent is mid-transaction when it forks: it holds the write lock.
    wrapper.set_autocommit(False)
    with wrapper.cursor() as cursor:
        cursor.execute("INSERT INTO t VALUES (1)")

    def child() -> int:
        connection = connections[alias]
        seen = _scalar(alias, "SELECT count(*) FROM t")  # the committed rows only
        own = (
            connection.connection is not parent
            and connection.connection is not idle_driver
        )
        with pytest.raises(sqlite3.OperationalError, match="parent process"):
            parent.cursor()
        return int(own) * 10 + seen

    assert _in_child(child) == 10
    # The child's exit left the parent's transaction alone.
    wrapper.commit()
    wrapper.set_autocommit(True)
    assert _scalar(alias, "SELECT count(*) FROM t") == 1
    assert wrapper.connection is parent


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [":memory:", "file:memdb?mode=memory&cache=shared", "file::memory:?cache=shared"],
)
def test_in_memory_database_is_rejected(sqlite_alias: Configure, name: str):
    alias = sqlite_alias(NAME=name)

    with pytest.raises(
        ImproperlyConfigured,
        match=re.escape(
            f"DATABASES['sqlite']['NAME'] is {name!r}, an in-memory database: each "
            "pooled connection would have a database of its own. Name a database "
            "file, or use Django's own 'django.db.backends.sqlite3' for an in-memory "
            "database."
        ),
    ):
        connections[alias].ensure_connection()


def test_postgresql_only_options_are_rejected(sqlite_alias: Configure):
    alias = sqlite_alias({"statement_timeout": 1000})

    with pytest.raises(
        ImproperlyConfigured,
        match=re.escape(
            "DATABASES['sqlite']['POOL']['statement_timeout'] is not supported by the "
            "SQLite backend. Remove it: it only means something to a database server."
        ),
    ):
        connections[alias].ensure_connection()


# -- the ORM, health, SQLAlchemy ----------------------------------------------------


def test_orm_migrates_and_queries(sqlite_alias: Configure):
    alias = sqlite_alias({"pool_size": 2, "max_overflow": 2})
    call_command("migrate", database=alias, run_syncdb=True, verbosity=0)

    Item.objects.using(alias).create(name="first")
    with transaction.atomic(using=alias):
        Item.objects.using(alias).create(name="second")
    with pytest.raises(RuntimeError), transaction.atomic(using=alias):
        Item.objects.using(alias).create(name="rolled back")
        raise RuntimeError

    def reader() -> list[str]:
        return sorted(Item.objects.using(alias).values_list("name", flat=True))

    results: list[list[str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(_in_thread(reader)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [["first", "second"]] * 4
    assert Item.objects.using(alias).filter(name__regex=r"^f").count() == 1
    # Django's REGEXP, not SQLAlchemy's: it takes any value, as text.
    assert Item.objects.using(alias).filter(pk__regex=r"^1$").count() == 1
    connections[alias].close()
    stats = engines.stats_of(alias)
    assert stats is not None and stats.checked_out == 0


def test_sqlalchemy_shares_the_pool(sqlite_alias: Configure):
    alias = sqlite_alias({"pool_size": 1})
    with connections[alias].cursor() as cursor:
        cursor.execute("CREATE TABLE t (x INTEGER)")
    connections[alias].close()

    with get_engine(alias).begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    with pytest.raises(RuntimeError), get_engine(alias).begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (2)"))
        raise RuntimeError

    assert _scalar(alias, "SELECT count(*) FROM t") == 1
    assert engines.stats_of(alias).connections_opened == 1  # type: ignore[union-attr]


def test_health_reports_the_file(sqlite_alias: Configure, tmp_path: Path):
    alias = sqlite_alias()
    _scalar(alias, "SELECT 1")
    connections[alias].close()

    report = check_health([alias], max_age=0)
    [health] = report.databases
    assert (health.status, health.reason) == ("healthy", None)
    assert health.latency_ms is not None

    missing = sqlite_alias(alias="missing", NAME=str(tmp_path / "no" / "such.sqlite3"))
    [health] = check_health([missing], max_age=0).databases
    assert (health.status, health.reason) == ("unhealthy", "unreachable")
    assert not (tmp_path / "no").exists()


def test_poolstatus_names_the_file(sqlite_alias: Configure):
    alias = sqlite_alias()
    _scalar(alias, "SELECT 1")
    connections[alias].close()
    out = StringIO()

    call_command("poolstatus", "--database", alias, "--check", stdout=out)

    assert connections.settings[alias]["NAME"] in out.getvalue()
    assert "localhost" not in out.getvalue()


def test_poolstatus_workers_show_the_file_and_no_server_limit(
    sqlite_alias: Configure, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    alias = sqlite_alias({"max_overflow": 1})
    name = connections.settings[alias]["NAME"]
    out = StringIO()

    call_command("poolstatus", "--database", alias, "--workers", "4", stdout=out)
    without = StringIO()
    call_command("poolstatus", "--database", alias, stdout=without)

    table = out.getvalue().split("Capacity")[1]
    [row] = [line.split() for line in table.splitlines() if name in line]
    assert row == [
        name,
        alias,
        "3",
        "4",
        "1",
        "12",
        "-",
        "no",
        "server",
        "(SQLite",
        "file)",
    ]
    assert "max_connections" not in out.getvalue()
    assert "max_connections" not in without.getvalue()
    assert "unknown" not in out.getvalue()


def test_checks_report_in_memory_and_server_options(monkeypatch: pytest.MonkeyPatch):
    from django_poolconf.checks import check_pool_settings
    from tests.test_checks import alias_settings

    sqlite = {"ENGINE": "django_poolconf.backends.sqlite3", "HOST": "", "PORT": ""}
    monkeypatch.setitem(
        connections.__dict__,
        "settings",
        {
            "default": alias_settings(**sqlite, NAME=":memory:"),
            "files": alias_settings(
                **sqlite,
                NAME="db.sqlite3",
                POOL={
                    "read_timeout": 5,
                    "pgbouncer_admin": "postgresql://stats@127.0.0.1:6432/pgbouncer",
                    "pgbouncer_prepared_statements": False,
                },
            ),
            "postgres": alias_settings(POOL={"read_timeout": 5}),
        },
    )

    # The PgBouncer options' own warnings aside.
    messages = [m for m in check_pool_settings() if m.is_serious()]

    assert [m.id for m in messages] == [
        "django_poolconf.E020",
        "django_poolconf.E021",
        "django_poolconf.E021",
    ]
    assert "DATABASES['files']['POOL']['read_timeout']" in messages[1].msg
    # Never the URL: it may hold a password.
    assert messages[2].msg == (
        "DATABASES['files']['POOL']['pgbouncer_admin'] is not supported by the "
        "SQLite backend."
    )


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ((4, 2, 16, "final", 0), ["init_command", "transaction_mode"]),
        ((5, 1, 0, "final", 0), []),
    ],
)
def test_checks_report_options_sqlite_refuses_before_django_5_1(
    monkeypatch: pytest.MonkeyPatch, version: tuple[Any, ...], expected: list[str]
):
    import django

    from django_poolconf.checks import check_pool_settings
    from tests.test_checks import alias_settings

    monkeypatch.setattr(django, "VERSION", version)
    monkeypatch.setitem(
        connections.__dict__,
        "settings",
        {
            "default": alias_settings(
                ENGINE="django_poolconf.backends.sqlite3",
                HOST="",
                PORT="",
                NAME="db.sqlite3",
                OPTIONS={
                    "init_command": "PRAGMA journal_mode = WAL",
                    "transaction_mode": "IMMEDIATE",
                    "timeout": 10,
                },
            ),
        },
    )

    messages = [m for m in check_pool_settings() if m.is_serious()]

    assert [m.id for m in messages] == ["django_poolconf.E022"] * len(expected)
    for message, key in zip(messages, expected, strict=True):
        assert message.msg == (
            f"DATABASES['default']['OPTIONS'][{key!r}] needs Django 5.1 or later: "
            "before it, sqlite3.connect() refuses it."
        )


def test_checks_report_pgbouncer_set_for_every_alias(monkeypatch: pytest.MonkeyPatch):
    from django.test import override_settings

    from django_poolconf.checks import check_pool_settings
    from tests.test_checks import alias_settings

    sqlite = {"ENGINE": "django_poolconf.backends.sqlite3", "HOST": "", "PORT": ""}
    monkeypatch.setitem(
        connections.__dict__,
        "settings",
        {"default": alias_settings(**sqlite, NAME="db.sqlite3")},
    )
    poolconf = {"POOL": {"pgbouncer": "transaction", "statement_timeout": 1000}}

    with override_settings(POOLCONF=poolconf):
        messages = [m for m in check_pool_settings() if m.is_serious()]

    assert [(m.id, m.msg) for m in messages] == [
        (
            "django_poolconf.E021",
            "DATABASES['default'] gets 'pgbouncer' from POOLCONF['POOL'], which the "
            "SQLite backend does not support.",
        )
    ]


def test_pool_false_asks_for_a_plain_connection(sqlite_alias: Configure):
    alias = sqlite_alias(OPTIONS={"pool": False})

    assert _scalar(alias, "SELECT 1") == 1
    assert type(connections[alias].connection) is sqlite3.Connection
    assert engines.stats_of(alias) is None


def test_transaction_scope_lends_the_connection_between_statements(
    sqlite_alias: Configure,
):
    alias = sqlite_alias(
        {"pool_size": 1, "checkout_scope": "transaction", "pool_timeout": 0.2}
    )
    wrapper = connections[alias]
    assert _scalar(alias, "SELECT 1") == 1

    # Idle: another thread borrows the only connection meanwhile.
    assert _in_thread(lambda: _scalar(alias, "SELECT 2")) == 2
    # A statement that may set session state holds it until the request ends.
    with wrapper.cursor() as cursor:
        cursor.execute("PRAGMA cache_size = -1234")
    with pytest.raises(PoolTimeout):
        _in_thread(lambda: connections[alias].ensure_connection())
    wrapper.close()
    assert _in_thread(lambda: _scalar(alias, "PRAGMA cache_size")) == -2000


def test_leak_detection_names_the_borrower(
    sqlite_alias: Configure, caplog: pytest.LogCaptureFixture
):
    alias = sqlite_alias({"leak_detection_threshold": 0.05})

    with caplog.at_level(logging.WARNING, logger="django_poolconf.leaks"):
        connections[alias].ensure_connection()
        deadline = time.monotonic() + 10
        while "longer than leak_detection_threshold" not in caplog.text:
            assert time.monotonic() < deadline, "the leak was never reported"
            time.sleep(0.02)
    assert "test_leak_detection_names_the_borrower" in caplog.text


def test_a_replaced_django_function_is_registered_again(sqlite_alias: Configure):
    alias = sqlite_alias({"pool_size": 1})
    wrapper = connections[alias]
    wrapper.ensure_connection()
    wrapper.connection.create_function("DJANGO_DATE_EXTRACT", 2, lambda *args: -1)
    assert _scalar(alias, "SELECT django_date_extract('year', '2024-05-06')") == -1
    wrapper.close()

    assert (
        _in_thread(
            lambda: _scalar(alias, "SELECT django_date_extract('year', '2024-05-06')")
        )
        == 2024
    )


def test_the_same_cached_statement_is_reset_at_every_return(sqlite_alias: Configure):
    alias = sqlite_alias({"pool_size": 1})

    def borrow() -> int:
        before = _scalar(alias, "PRAGMA cache_size")
        with connections[alias].cursor() as cursor:
            # The same text each time: sqlite3's statement cache compiles it once.
            cursor.execute("PRAGMA cache_size = -1234")
        return before

    assert [_in_thread(borrow) for _ in range(3)] == [-2000, -2000, -2000]


def test_a_borrowers_authorizer_is_removed_and_does_not_hide_changes(
    sqlite_alias: Configure,
):
    alias = sqlite_alias({"pool_size": 1})
    seen: list[int] = []

    def borrower() -> None:
        connection = connections[alias]
        connection.ensure_connection()

        def authorizer(action: int, *args: Any) -> int:
            seen.append(action)
            return sqlite3.SQLITE_OK

        connection.connection.set_authorizer(authorizer)
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA foreign_keys = OFF")

    _in_thread(borrower)
    count = len(seen)
    assert count > 0

    assert _in_thread(lambda: _scalar(alias, "PRAGMA foreign_keys")) == 1
    assert len(seen) == count


def test_rollback_policy_keeps_sql_state_but_not_functions(sqlite_alias: Configure):
    alias = sqlite_alias({"pool_size": 1, "reset_on_return": "rollback"})
    with connections[alias].cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE kept (x INTEGER)")
    connections[alias].connection.create_function("borrowers_own", 0, lambda: 1)
    connections[alias].close()

    def next_borrower() -> int:
        with pytest.raises(DatabaseError):
            _scalar(alias, "SELECT borrowers_own()")
        return _scalar(alias, "SELECT count(*) FROM temp.sqlite_master")

    assert _in_thread(next_borrower) == 1


def test_a_connection_closed_by_its_borrower_is_not_pooled(sqlite_alias: Configure):
    alias = sqlite_alias({"pool_size": 1})
    wrapper = connections[alias]
    wrapper.ensure_connection()
    closed = wrapper.connection
    closed.close()  # the driver's, behind Django's back
    with pytest.raises(DatabaseError, match="closed database"):
        _scalar(alias, "SELECT 1")
    wrapper.close()

    def next_borrower() -> bool:
        return (
            _scalar(alias, "SELECT 1") == 1
            and connections[alias].connection is not closed
        )

    assert _in_thread(next_borrower)
    stats = engines.stats_of(alias)
    assert stats is not None and stats.connections_opened == 2


def test_test_database_is_a_file_beside_the_database(sqlite_alias: Configure):
    alias = sqlite_alias()
    creation = connections[alias].creation
    name = connections.settings[alias]["NAME"]

    assert creation._get_test_db_name() == str(
        Path(name).with_name(f"test_{Path(name).name}")
    )

    connections[alias].settings_dict["TEST"] = {"NAME": ":memory:"}
    with pytest.raises(
        ImproperlyConfigured,
        match=re.escape(
            "DATABASES['sqlite']['TEST']['NAME'] is ':memory:', an in-memory "
            "database, which a pool cannot share."
        ),
    ):
        creation._get_test_db_name()
