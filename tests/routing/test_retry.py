"""Reads retried on the primary when the replica fails under them, against the real servers.

A read the router sent to a replica, outside a transaction, whose statement failed
(its connection lost, or cancelled by a recovery conflict) before any row reached
the caller, runs once more on the replica's primary. Nothing else is retried.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.signals import request_finished, request_started
from django.db import (
    InternalError,
    OperationalError,
    ProgrammingError,
    connections,
    transaction,
)

from django_poolconf import engines, get_engine, pool_stats, replicas
from django_poolconf.routers import routing_scope, use_replica
from tests.routing.conftest import admin_connection, wait_until
from tests.routing_urls import server
from tests.testapp.models import Item

# How the log names a backend ended by pg_terminate_backend(): psycopg 3.1 reports
# it as a plain OperationalError, without the server's SQLSTATE.
_SHUTDOWN = r"(?:AdminShutdown \(SQLSTATE 57P01\)|OperationalError)"

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])

# A read that holds a lock on testapp_item and sleeps on the replica only, so that it
# is still running when the test kills it; on the primary it answers at once.
SLOW_ON_REPLICA = (
    "SELECT 0 AS id, pg_is_in_recovery() AS in_recovery, "
    "(SELECT count(*) FROM testapp_item) AS items "
    "FROM pg_sleep(CASE WHEN pg_is_in_recovery() THEN 30 ELSE 0 END) /* {marker} */"
)


def _read(marker: str) -> Any:
    """One routed read (``raw()`` asks the router), that sleeps on the replica."""
    return next(iter(Item.objects.raw(SLOW_ON_REPLICA.format(marker=marker))))


def _when_running(marker: str, action: Any) -> threading.Thread:
    """In a thread: wait until the replica runs the read marked ``marker``, then act."""

    def run() -> None:
        with admin_connection("replica") as replica:
            wait_until(
                lambda: replica.execute(
                    "SELECT EXISTS (SELECT FROM pg_stat_activity "
                    "WHERE state = 'active' AND pid <> pg_backend_pid() "
                    "AND query LIKE %s)",
                    [f"%/* {marker} */%"],
                ).fetchone()[0],
                f"the replica never ran {marker!r}",
            )
            action(replica, marker)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _terminate(replica: Any, marker: str) -> None:
    replica.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE pid <> pg_backend_pid() AND query LIKE %s",
        [f"%/* {marker} */%"],
    )


def _lock_on_the_primary(replica: Any, marker: str) -> None:
    # The primary's ACCESS EXCLUSIVE lock is replayed on the standby, where the read
    # holds ACCESS SHARE on the same table: with max_standby_streaming_delay = 0
    # the standby cancels the read at once (SQLSTATE 40001).
    with admin_connection("default") as primary, primary.transaction():
        primary.execute("LOCK TABLE testapp_item IN ACCESS EXCLUSIVE MODE")


def _terminate_idle_replica_connection() -> None:
    """Kill the server side of this thread's connection to the replica, while it is idle."""
    pid = connections["replica"].connection.info.backend_pid
    with admin_connection("replica") as replica:
        replica.execute("SELECT pg_terminate_backend(%s)", [pid])
        wait_until(
            lambda: (
                not replica.execute(
                    "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)", [pid]
                ).fetchone()[0]
            ),
            "the replica's backend did not end",
        )


@pytest.fixture
def no_standby_delay() -> Iterator[None]:
    """The replica cancels a read that conflicts with replay at once; restored after."""
    with admin_connection("replica", "postgres") as replica:
        replica.execute("ALTER SYSTEM SET max_standby_streaming_delay = 0")
        replica.execute("SELECT pg_reload_conf()")
        try:
            yield
        finally:
            replica.execute("ALTER SYSTEM RESET max_standby_streaming_delay")
            replica.execute("SELECT pg_reload_conf()")


def _retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and "; retried on" in record.getMessage()
    ]


# -- retried ----------------------------------------------------------------------------


def test_read_whose_replica_connection_is_killed_is_retried_on_the_primary(
    routing, caught_up, caplog
):
    routing()
    with routing_scope():
        assert server()["in_recovery"] is True
        killer = _when_running("killed", _terminate)
        row = _read("killed")
        killer.join()
        after = server()

    assert row.in_recovery is False
    # The rest of the scope reads the primary, at least as fresh as the retry.
    assert after["in_recovery"] is False
    assert replicas.replica_states()["replica"].breaker != "closed"
    password = connections["default"].settings_dict["PASSWORD"]
    [warning] = _retry_warnings(caplog)
    assert re.fullmatch(
        rf"read on replica 'replica' failed \({_SHUTDOWN}\); retried on 'default'",
        warning,
    ), warning
    assert not password or password not in caplog.text


def test_recovery_conflict_on_the_replica_is_retried_on_the_primary(
    routing, caught_up, no_standby_delay, caplog
):
    routing()
    with routing_scope():
        assert server()["in_recovery"] is True
        locker = _when_running("conflict", _lock_on_the_primary)
        row = _read("conflict")
        locker.join()

    assert row.in_recovery is False
    assert _retry_warnings(caplog) == [
        "read on replica 'replica' failed (SerializationFailure (SQLSTATE 40001)); "
        "retried on 'default'"
    ]
    # The connection itself was fine: it stays with its wrapper.
    assert connections["replica"].connection is not None


def test_read_on_a_dead_idle_connection_is_retried_under_use_replica(
    routing, caught_up
):
    routing()
    with routing_scope(), use_replica():
        assert server()["in_recovery"] is True
        _terminate_idle_replica_connection()
        retried = server()
        after = server()

    assert (retried["in_recovery"], after["in_recovery"]) == (False, False)


def test_server_side_cursor_that_fails_to_open_is_retried_server_side(
    routing, caught_up
):
    with admin_connection("default") as primary:
        primary.execute(
            "INSERT INTO testapp_item (name) SELECT 'row-' || n FROM generate_series(1, 5) n"
        )
    caught_up()
    routing()
    with routing_scope():
        assert server()["in_recovery"] is True
        _terminate_idle_replica_connection()
        names = [item.name for item in Item.objects.order_by("name").iterator(2)]
        named = connections["default"].connection.named_cursors

    assert names == [f"row-{n}" for n in range(1, 6)]
    assert len(named) == 1  # the retry's cursor was a server-side one too


# -- not retried --------------------------------------------------------------------------


def test_read_inside_atomic_on_the_replica_is_not_retried(routing, caught_up, caplog):
    routing()
    with routing_scope():
        assert server()["in_recovery"] is True
        killer = _when_running("in-atomic", _terminate)
        with pytest.raises(OperationalError), transaction.atomic(using="replica"):
            _read("in-atomic")
        killer.join()

    assert _retry_warnings(caplog) == []


def test_rows_already_read_from_a_server_side_cursor_are_not_retried(
    routing, caught_up, caplog
):
    with admin_connection("default") as primary:
        primary.execute(
            "INSERT INTO testapp_item (name) SELECT 'row-' || n FROM generate_series(1, 5) n"
        )
    caught_up()
    routing()
    with routing_scope():
        assert server()["in_recovery"] is True
        rows = Item.objects.order_by("name").iterator(chunk_size=1)
        first = next(rows)
        _terminate_idle_replica_connection()
        with pytest.raises(OperationalError):
            list(rows)

    assert first.name == "row-1"
    assert _retry_warnings(caplog) == []


@pytest.mark.parametrize(
    ("sql", "many"),
    [
        # May modify data (a data-modifying WITH), so it is never sent elsewhere.
        ("WITH one AS (SELECT 1) SELECT * FROM one", False),
        ("DO $$ BEGIN END $$", False),
        ("SELECT %s", True),
    ],
    ids=["with", "do", "executemany"],
)
def test_statement_that_is_not_a_plain_select_is_not_retried(
    routing, caught_up, caplog, sql, many
):
    routing()
    with routing_scope():
        assert server()["in_recovery"] is True
        _terminate_idle_replica_connection()
        with (
            pytest.raises(OperationalError),
            connections["replica"].cursor() as cursor,
        ):
            if many:
                cursor.executemany(sql, [(1,), (2,)])
            else:
                cursor.execute(sql)

    assert _retry_warnings(caplog) == []
    # The lost connection still opens the breaker.
    assert replicas.replica_states()["replica"].breaker != "closed"


@pytest.mark.parametrize("transaction_on_the_primary", ["atomic", "autocommit_off"])
def test_read_is_not_retried_into_a_transaction_on_the_primary(
    routing, caught_up, caplog, transaction_on_the_primary
):
    routing()
    primary = connections["default"]
    with routing_scope(), contextlib.ExitStack() as stack:
        if transaction_on_the_primary == "atomic":
            stack.enter_context(transaction.atomic(using="default"))
        else:
            primary.set_autocommit(False)
            stack.callback(primary.set_autocommit, True)
            stack.callback(primary.rollback)
        with use_replica():
            assert server()["in_recovery"] is True
            _terminate_idle_replica_connection()
            with pytest.raises(OperationalError, match="administrator command"):
                server()

    assert _retry_warnings(caplog) == []


def test_read_is_not_retried_when_the_primary_has_no_free_connection(
    routing, caught_up, pool_options, caplog
):
    routing()
    pool_options(pool_size=1, max_overflow=0, pool_timeout=0.1)
    with get_engine("default").connect(), routing_scope():
        assert server()["in_recovery"] is True
        _terminate_idle_replica_connection()
        with pytest.raises(OperationalError, match="administrator command"):
            server()

    assert _retry_warnings(caplog) == []
    assert re.search(
        rf"read on replica 'replica' failed \({_SHUTDOWN}\); not retried on "
        r"'default': No connection for 'default' within 0\.1 s "
        r"\(pool_size=1, max_overflow=0\)\.",
        caplog.text,
    ), caplog.text


def test_error_of_the_statement_itself_is_not_retried_and_keeps_the_breaker_closed(
    routing, caught_up, caplog
):
    routing()
    with routing_scope():
        assert server()["in_recovery"] is True
        with pytest.raises(ProgrammingError):
            next(iter(Item.objects.raw("SELECT 0 AS id FROM no_such_table")))

    assert _retry_warnings(caplog) == []
    assert replicas.replica_states()["replica"].breaker == "closed"


def test_recovery_conflict_inside_atomic_on_the_replica_is_not_retried(
    routing, caught_up, no_standby_delay, caplog
):
    routing()
    with routing_scope():
        assert server()["in_recovery"] is True
        locker = _when_running("conflict-in-atomic", _lock_on_the_primary)
        with (
            pytest.raises(OperationalError, match="conflict with recovery"),
            transaction.atomic(using="replica"),
        ):
            _read("conflict-in-atomic")
        locker.join()

    assert _retry_warnings(caplog) == []


# -- review of issue 14 -------------------------------------------------------------------


def test_a_select_that_writes_is_not_run_on_the_primary_by_the_retry(
    routing, caught_up
):
    # A SELECT may write (nextval(), a volatile function that inserts, SELECT INTO):
    # on the standby it fails with 25006 and writes nothing. When the replica's
    # connection is lost under it, the retry must not make it write on the primary.
    with admin_connection("default") as primary:
        primary.execute("CREATE SEQUENCE IF NOT EXISTS review_retry_seq")
    caught_up()
    routing()
    try:
        with routing_scope():
            assert server()["in_recovery"] is True
            _terminate_idle_replica_connection()
            # What the standby answers: the retry runs read-only.
            with pytest.raises(InternalError, match="read-only transaction"):
                next(iter(Item.objects.raw("SELECT nextval('review_retry_seq') AS id")))
        with admin_connection("default") as primary:
            (called,) = primary.execute(
                "SELECT is_called FROM review_retry_seq"
            ).fetchone()
        assert called is False, "the retry ran nextval() on the primary"
    finally:
        with admin_connection("default") as primary:
            primary.execute("DROP SEQUENCE IF EXISTS review_retry_seq")


def test_a_retry_in_transaction_scope_holds_no_primary_connection_after_the_read(
    routing, caught_up, pool_options
):
    # In checkout_scope = "transaction" a connection is parked as soon as no cursor is
    # open. The retry's cursor of the primary must count as closed when the caller
    # closes its cursor, or the primary's connection stays checked out.
    routing()
    pool_options(checkout_scope="transaction")
    engines.dispose("default")
    request_started.send(sender=None)
    try:
        with routing_scope():
            assert server()["in_recovery"] is True
            _terminate_idle_replica_connection()
            assert server()["in_recovery"] is False  # retried on the primary
            assert pool_stats("default").checked_out == 0
            assert server()["in_recovery"] is False  # the scope reads the primary
            assert pool_stats("default").checked_out == 0
    finally:
        request_finished.send(sender=None)
    assert pool_stats("default").checked_out == 0


def test_a_retry_neither_commits_nor_joins_a_transaction_begun_by_hand_on_the_primary(
    routing, caught_up, caplog
):
    # Django's autocommit is on, but the primary's session is in a transaction that a
    # raw BEGIN opened: the retry must neither join it nor end it.
    routing()
    primary = connections["default"]
    with routing_scope():
        with primary.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("INSERT INTO testapp_item (name) VALUES ('by-hand')")
        try:
            with use_replica():
                assert server()["in_recovery"] is True
                _terminate_idle_replica_connection()
                with pytest.raises(OperationalError, match="administrator command"):
                    server()
        finally:
            with primary.cursor() as cursor:
                cursor.execute("ROLLBACK")
    with admin_connection("default") as admin:
        assert not admin.execute(
            "SELECT EXISTS (SELECT FROM testapp_item WHERE name = 'by-hand')"
        ).fetchone()[0]
    assert _retry_warnings(caplog) == []
