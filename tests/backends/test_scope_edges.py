"""``checkout_scope = "transaction"`` at its edges: what could lend one connection twice.

Reproducers from the review of issue 15, against the real server: a connection must
never be used by a borrower while the pool counts it free, a transaction the server
has open must not be cut, and no borrower sees another's session.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.core.signals import request_finished, request_started
from django.db import DatabaseError, Error, connection, connections, transaction
from django.db.backends.signals import connection_created
from django.test import TestCase

from django_poolconf import engines, pool_stats
from tests.backends.test_scope import _checked_out, _in_thread, _pid, scope
from tests.testapp.models import Item

__all__ = ["scope"]  # the fixture, used by name

pytestmark = pytest.mark.django_db(transaction=True)


def _backend_pid_elsewhere() -> list[Any]:
    """The backend pid another thread gets, or the error it gets (pool_timeout)."""
    got: list[Any] = []

    def body() -> None:
        try:
            got.append(_pid())
        except DatabaseError as error:
            got.append(error)

    _in_thread(body).join(30)
    return got


def test_a_query_in_a_connection_created_receiver_leaves_the_connection_held(scope):
    # connection_created is sent at each take-back in transaction scope. A receiver
    # that runs a statement (one that sets nothing) closes its cursor: that must not
    # park the connection that the statement about to run is being given.
    scope(pool_size=1, max_overflow=0, pool_timeout=1)

    def receiver(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias == "default":
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")

    connection_created.connect(receiver)
    try:
        Item.objects.count()  # connect(), then parked
        with connection.cursor() as cursor:  # a take-back
            cursor.execute("SELECT pg_backend_pid()")
            mine = cursor.fetchone()[0]
            held = _checked_out()
            # With the only connection in use here, another thread must wait.
            other = _backend_pid_elsewhere()
    finally:
        connection_created.disconnect(receiver)

    assert other and other[0] != mine, "another borrower ran on this cursor's backend"
    assert held == 1


def test_a_transaction_begun_in_sql_is_not_cut_by_a_return(scope):
    # In autocommit, BEGIN sent as SQL opens a transaction on the server that Django
    # does not know about. Returning the connection between its statements rolls
    # it back, and what follows runs outside it.
    scope(pool_size=1, max_overflow=0)
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
    held = _checked_out()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO testapp_item (name) VALUES (%s)", ["in a raw transaction"]
        )
    with connection.cursor() as cursor:
        cursor.execute("ROLLBACK")

    assert not Item.objects.filter(name="in a raw transaction").exists()
    assert held == 1
    assert _checked_out() == 0


def test_a_set_after_another_statement_in_one_execute_pins(scope):
    # "SELECT 1; SET ..." sets session state just as "SET ..." does.
    scope(pool_size=1, max_overflow=0)
    request_started.send(sender=None)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1; SET application_name = 'tenant 7'")
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('application_name')")
            seen = cursor.fetchone()[0]
    finally:
        request_finished.send(sender=None)

    assert seen == "tenant 7"


def test_state_a_function_sets_out_of_sight_never_reaches_another_borrower(
    scope, admin
):
    # The statement's text shows no set_config: nothing pins. The reset at the
    # return must still keep the setting from the next borrower, here another
    # thread's statement in between two of this one's, on the only connection.
    scope(pool_size=1, max_overflow=0, pool_timeout=10)
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE OR REPLACE FUNCTION poolconf_hide() RETURNS int LANGUAGE plpgsql "
            "AS $$ BEGIN PERFORM set_config('app.secret', 'A', false); "
            "RETURN 1; END $$"
        )
    seen: list[Any] = []
    try:
        request_started.send(sender=None)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT poolconf_hide()")
            mine = _pid()

            def other() -> None:
                request_started.send(sender=None)
                try:
                    with connection.cursor() as cursor:
                        cursor.execute(
                            "SELECT pg_backend_pid(), "
                            "current_setting('app.secret', true)"
                        )
                        seen.append(cursor.fetchone())
                finally:
                    request_finished.send(sender=None)

            _in_thread(other).join(30)
        finally:
            request_finished.send(sender=None)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP FUNCTION poolconf_hide()")

    assert seen and seen[0][0] == mine  # the same backend, one statement later
    assert seen[0][1] in (None, "")


def test_counts_stay_consistent_over_many_statements(scope):
    scope(pool_size=2, max_overflow=0)
    before = pool_stats("default")
    errors: list[BaseException] = []

    def body() -> None:
        try:
            for n in range(20):
                request_started.send(sender=None)
                try:
                    Item.objects.filter(name=str(n)).exists()
                    with transaction.atomic():
                        Item.objects.create(name=str(n))
                    list(Item.objects.filter(name=str(n)).iterator(chunk_size=1))
                finally:
                    request_finished.send(sender=None)
        except BaseException as error:  # noqa: BLE001 - asserted below
            errors.append(error)

    threads = [_in_thread(body) for _ in range(4)]
    for thread in threads:
        thread.join(60)
    after = pool_stats("default")

    assert errors == []
    assert after.checked_out == 0
    assert after.checkouts > before.checkouts
    assert Item.objects.count() == 80


def test_connection_close_between_statements_checks_the_connection_in(scope):
    scope(pool_size=1, max_overflow=0)
    Item.objects.count()
    connection.close()
    assert _checked_out() == 0
    assert _backend_pid_elsewhere()  # the only connection is free
    assert Item.objects.count() == 0


@pytest.mark.parametrize(
    ("make", "use"),
    [
        ("SELECT 1 AS n INTO TEMP poolconf_t", "SELECT n FROM poolconf_t"),
        (
            "CREATE OR REPLACE TEMP VIEW poolconf_v AS SELECT 1 AS n",
            "SELECT n FROM poolconf_v",
        ),
    ],
    ids=["select-into-temp", "create-or-replace-temp-view"],
)
def test_a_temporary_object_is_seen_by_the_rest_of_the_request(scope, make, use):
    scope(pool_size=1, max_overflow=0)
    request_started.send(sender=None)
    try:
        with connection.cursor() as cursor:
            cursor.execute(make)
        with connection.cursor() as cursor:
            cursor.execute(use)
            seen = cursor.fetchone()[0]
    finally:
        request_finished.send(sender=None)

    assert seen == 1


@pytest.mark.parametrize("checkout_scope", ["transaction", "request"])
def test_a_cursor_of_an_ended_borrowing_never_runs_on_another_borrower_s_connection(
    scope, checkout_scope
):
    # A cursor left open when the connection was checked in (connection.close(),
    # or the request's end) still holds the driver cursor of a connection that
    # another borrower may be using now. Django's own close() would have closed the
    # connection under it: it must fail, not run inside someone else's transaction.
    scope(pool_size=1, max_overflow=0, pool_timeout=10, checkout_scope=checkout_scope)
    stale = connection.cursor()
    stale.execute("SELECT 1")
    connection.close()
    inside = threading.Event()
    done = threading.Event()
    theirs: list[int] = []

    def other() -> None:
        with transaction.atomic():
            theirs.append(_pid())
            inside.set()
            done.wait(10)

    thread = _in_thread(other)
    try:
        assert inside.wait(10)
        with pytest.raises(DatabaseError):
            stale.execute("SELECT pg_backend_pid()")
            assert stale.fetchone()[0] not in theirs, "ran in another's transaction"
    finally:
        done.set()
        thread.join(10)


def test_an_iterator_left_half_way_holds_until_the_request_ends(scope):
    scope(pool_size=1, max_overflow=0)
    Item.objects.bulk_create(Item(name=f"row {n}") for n in range(10))
    request_started.send(sender=None)
    try:
        rows = Item.objects.order_by("id").iterator(chunk_size=2)
        first = next(rows)
        assert _checked_out() == 1  # the server-side cursor is open
        assert Item.objects.filter(pk=first.pk).exists()
        assert _checked_out() == 1
    finally:
        request_finished.send(sender=None)
    assert _checked_out() == 0
    assert Item.objects.count() == 10  # the connection works after the reset
    with pytest.raises(Error):
        list(rows)  # its server-side cursor was closed by the reset
    del rows
    assert _checked_out() == 0
    assert _backend_pid_elsewhere()


def test_manual_transactions_hold_to_the_commit(scope):
    scope(pool_size=1, max_overflow=0)
    transaction.set_autocommit(False)
    try:
        Item.objects.create(name="manual")
        assert _checked_out() == 1
        transaction.rollback()
        assert _checked_out() == 1  # still not autocommit
        Item.objects.create(name="kept")
        transaction.commit()
    finally:
        transaction.set_autocommit(True)
    assert _checked_out() == 0
    assert list(Item.objects.values_list("name", flat=True)) == ["kept"]


def test_durable_blocks_savepoints_and_errors_inside_a_block(scope):
    scope(pool_size=1, max_overflow=0)
    with transaction.atomic(durable=True):
        Item.objects.create(name="outer")
        try:
            with transaction.atomic():
                Item.objects.create(name="inner")
                raise ValueError
        except ValueError:
            pass
        with (
            pytest.raises(DatabaseError),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute("SELECT 1/0")
        assert _checked_out() == 1
        pid = _pid()
        assert pid == _pid()
    assert _checked_out() == 0
    assert list(Item.objects.values_list("name", flat=True)) == ["outer"]
    with pytest.raises(DatabaseError), transaction.atomic():
        Item.objects.create(name="rolled back")
        with connection.cursor() as cursor:  # noqa: SIM117 - after the create
            cursor.execute("SELECT 1/0")
    assert _checked_out() == 0
    assert Item.objects.count() == 1


def test_select_for_update_outside_a_block_raises_and_the_request_end_returns(scope):
    from django.db.transaction import TransactionManagementError

    scope(pool_size=1, max_overflow=0, pool_timeout=1)
    Item.objects.create(name="a")
    request_started.send(sender=None)
    try:
        with pytest.raises(TransactionManagementError):
            list(Item.objects.select_for_update())
        # Django checked the connection's autocommit (a checkout) and ran nothing:
        # held to the next statement or the request's end, as in request scope.
    finally:
        request_finished.send(sender=None)
    assert _checked_out() == 0
    assert isinstance(_backend_pid_elsewhere()[0], int)


def test_a_shared_connection_object_holds_its_connection(scope):
    scope(pool_size=2, max_overflow=0)
    Item.objects.count()
    connection.inc_thread_sharing()
    try:
        pids: list[int] = []

        def other() -> None:
            pids.append(_pid())

        wrapper = connections["default"]
        thread = threading.Thread(target=lambda: _use(wrapper, other))
        thread.start()
        thread.join(10)
        pids.append(_pid())
        assert pids[0] == pids[1]
        assert _checked_out() == 1
    finally:
        connection.dec_thread_sharing()
        connection.close()
    assert _checked_out() == 0


def _use(wrapper: Any, body: Callable[[], Any]) -> None:
    connections["default"] = wrapper
    body()


def test_leak_detection_watches_each_checkout_not_the_request(scope, caplog):
    scope(leak_detection_threshold=0.3)
    caplog.set_level(logging.INFO, logger="django_poolconf.leaks")
    request_started.send(sender=None)
    try:
        for _ in range(4):  # 0.6 s of request, never 0.3 s held
            Item.objects.exists()
            time.sleep(0.15)
        quiet = _leak_warnings(caplog)
        with transaction.atomic():
            Item.objects.exists()
            time.sleep(0.8)  # held through the block: a leak to report
    finally:
        request_finished.send(sender=None)

    assert quiet == []
    warnings = _leak_warnings(caplog)
    assert len(warnings) == 1 and "'default'" in warnings[0]


def _leak_warnings(caplog: Any) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "django_poolconf.leaks" and record.levelno == logging.WARNING
    ]


@pytest.mark.parametrize("cursor_open", [False, True], ids=["parked", "cursor-open"])
def test_a_child_forked_between_statements_borrows_its_own(scope, cursor_open):
    from tests.pool.test_registry import _in_child

    scope()
    parent = _pid()  # parked now
    assert _checked_out() == 0

    def in_child() -> int:
        pid = _pid()
        # The child's statement returned its connection, as the parent's do.
        return pid if _checked_out() == 0 else 0

    if cursor_open:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            child = _in_child(in_child)
    else:
        child = _in_child(in_child)

    assert child not in (0, parent)
    assert _pid() == parent
    assert _checked_out() == 0


class TestInDjangosTestCase(TestCase):
    """Django's TestCase wraps each test in atomic(): the connection is held through."""

    databases = {"default"}

    @classmethod
    def setUpClass(cls) -> None:
        settings_dict = connections.settings["default"]
        cls.original = settings_dict["POOL"]
        connections["default"].close()
        settings_dict["POOL"] = {**cls.original, "checkout_scope": "transaction"}
        super().setUpClass()

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            super().tearDownClass()
        finally:
            connections["default"].close()
            connections.settings["default"]["POOL"] = cls.original
            engines.dispose("default")

    def test_statements_run_in_the_test_s_transaction(self) -> None:
        wrapper = connections["default"]
        assert wrapper.get_pool_settings().checkout_scope == "transaction"
        Item.objects.create(name="in the test")
        pid = _pid()
        assert _checked_out() == 1
        with self.captureOnCommitCallbacks(execute=True) as callbacks:
            transaction.on_commit(lambda: Item.objects.create(name="after"))
        assert len(callbacks) == 1
        assert _pid() == pid
        assert Item.objects.count() == 2


def test_an_on_commit_callback_that_raises_leaves_the_connection_returned(scope):
    scope(pool_size=1, max_overflow=0, pool_timeout=1)

    def fail() -> None:
        raise ValueError

    with pytest.raises(ValueError), transaction.atomic():
        Item.objects.create(name="committed")
        transaction.on_commit(fail)
    assert _checked_out() == 0, "held after the block ended"


def test_state_a_connection_created_receiver_sets_does_not_pin(scope):
    # A receiver that sets the session up (a tenant's search_path, say) runs again
    # at every checkout: what it sets needs no pin, and pinning it would hold every
    # connection for the whole request, as request scope does.
    scope(pool_size=1, max_overflow=0)

    def receiver(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias == "default":
            with connection.cursor() as cursor:
                cursor.execute("SET application_name = 'tenant 9'")

    connection_created.connect(receiver)
    request_started.send(sender=None)
    try:
        Item.objects.count()
        between = _checked_out()
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('application_name')")
            seen = cursor.fetchone()[0]
    finally:
        request_finished.send(sender=None)
        connection_created.disconnect(receiver)

    assert seen == "tenant 9"
    assert between == 0
