"""``checkout_scope = "transaction"``: a connection is held only while it works.

Against the real server: what Django code relies on within a request (a transaction
on one backend, session state it set, an open server-side cursor, a row lock) holds,
and between its statements the pooled connection is free for other borrowers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.core.signals import request_finished, request_started
from django.db import DatabaseError, connection, connections, transaction
from django.test import AsyncClient

from django_poolconf import engines, pool_stats
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def scope(pool_options: Callable[..., None]) -> Iterator[Callable[..., None]]:
    """Set the default alias's pool options, in transaction scope unless told otherwise."""

    def set_options(**options: Any) -> None:
        pool_options(**{"checkout_scope": "transaction", **options})
        engines.dispose("default")

    yield set_options
    connections.close_all()


def _pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def _checked_out() -> int:
    return pool_stats("default").checked_out


def _in_thread(body: Callable[[], Any]) -> threading.Thread:
    def run() -> None:
        try:
            body()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_statement_outside_a_transaction_returns_the_connection(scope):
    scope()
    request_started.send(sender=None)
    try:
        Item.objects.create(name="a")
        assert _checked_out() == 0
        assert Item.objects.filter(name="a").count() == 1
        assert _checked_out() == 0
    finally:
        request_finished.send(sender=None)


def test_request_scope_holds_the_connection_to_the_request_end(scope):
    scope(checkout_scope="request")
    request_started.send(sender=None)
    try:
        Item.objects.filter(name="a").count()
        assert _checked_out() == 1
    finally:
        request_finished.send(sender=None)
    assert _checked_out() == 0


def test_every_statement_of_an_atomic_block_runs_on_one_backend(scope):
    scope(pool_size=2, max_overflow=0)
    pids: list[int] = []
    other: list[int] = []
    inside = threading.Event()
    released = threading.Event()

    def elsewhere() -> None:
        inside.wait(10)
        for _ in range(5):  # other borrowers run while the block waits
            other.append(_pid())
        released.set()

    thread = _in_thread(elsewhere)
    with transaction.atomic():
        pids.append(_pid())
        Item.objects.create(name="in the block")
        inside.set()
        assert released.wait(10)
        pids.append(_pid())
        assert _checked_out() == 1  # held through the block
    thread.join()

    assert pids[0] == pids[1]
    assert pids[0] not in other
    assert _checked_out() == 0


def test_a_set_is_seen_by_the_rest_of_the_request_and_not_by_the_next(scope):
    scope(pool_size=1, max_overflow=0)
    request_started.send(sender=None)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET application_name = 'tenant 42'")
        assert _checked_out() == 1  # pinned: the session holds the request's state
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('application_name')")
            seen = cursor.fetchone()[0]
    finally:
        request_finished.send(sender=None)
    assert _checked_out() == 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('application_name')")
        after = cursor.fetchone()[0]

    assert seen == "tenant 42"
    assert after != "tenant 42"


def test_set_config_in_a_select_pins_the_connection(scope):
    scope(pool_size=1, max_overflow=0)
    request_started.send(sender=None)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('app.tenant', '42', false)")
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('app.tenant', true)")
            seen = cursor.fetchone()[0]
    finally:
        request_finished.send(sender=None)
    with connection.cursor() as cursor:
        cursor.execute("SELECT nullif(current_setting('app.tenant', true), '')")
        after = cursor.fetchone()[0]

    assert seen == "42"
    assert after is None


def test_iterator_interleaved_with_other_queries_returns_every_row(scope):
    scope(pool_size=1, max_overflow=0)
    Item.objects.bulk_create(Item(name=f"row {n}") for n in range(25))
    seen = []
    for item in Item.objects.order_by("id").iterator(chunk_size=4):
        seen.append(item.name)
        assert Item.objects.filter(pk=item.pk).exists()  # on the same connection

    assert seen == [f"row {n}" for n in range(25)]
    assert _checked_out() == 0  # the server-side cursor closed: released


def test_select_for_update_holds_its_lock_to_the_end_of_the_block(scope):
    scope(pool_size=2, max_overflow=0)
    item = Item.objects.create(name="locked")
    locked = threading.Event()
    tried = threading.Event()
    outcome: list[str] = []

    def contender() -> None:
        locked.wait(10)
        try:
            with transaction.atomic():
                Item.objects.select_for_update(nowait=True).get(pk=item.pk)
            outcome.append("got the lock")
        except DatabaseError:
            outcome.append("locked out")
        tried.set()

    thread = _in_thread(contender)
    with transaction.atomic():
        Item.objects.select_for_update().get(pk=item.pk)
        Item.objects.filter(pk=item.pk).update(name="still locked")
        locked.set()
        assert tried.wait(10)
    thread.join()

    assert outcome == ["locked out"]
    with transaction.atomic():
        Item.objects.select_for_update(nowait=True).get(pk=item.pk)


def test_on_commit_callbacks_run_and_may_query(scope):
    scope()
    seen: list[int] = []
    with transaction.atomic():
        Item.objects.create(name="committed")
        transaction.on_commit(lambda: seen.append(Item.objects.count()))
        assert seen == []

    assert seen == [1]
    assert _checked_out() == 0


def test_a_raw_cursor_kept_open_holds_the_connection(scope):
    scope(pool_size=1, max_overflow=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        first = cursor.fetchone()[0]
        assert _checked_out() == 1
        cursor.execute("SELECT pg_backend_pid()")
        second = cursor.fetchone()[0]
    assert first == second
    assert _checked_out() == 0


def test_threads_waiting_between_queries_share_a_small_pool(scope, admin, test_db_name):
    # Read, wait on something that is not the database, read: in transaction scope
    # two connections serve 16 such threads at once, which request scope cannot.
    scope(pool_size=2, max_overflow=0, pool_timeout=5)
    Item.objects.create(name="a")
    errors: list[BaseException] = []
    most = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal most
        while not stop.is_set():
            count = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                [test_db_name],
            ).fetchone()[0]
            most = max(most, count)
            time.sleep(0.005)

    def request() -> None:
        for _ in range(3):
            request_started.send(sender=None)
            try:
                Item.objects.get(name="a")
                time.sleep(0.2)
                Item.objects.get(name="a")
            except BaseException as error:  # noqa: BLE001 - asserted below
                errors.append(error)
            finally:
                request_finished.send(sender=None)

    connections.close_all()
    sampler = threading.Thread(target=sample)
    sampler.start()
    began = time.monotonic()
    threads = [_in_thread(request) for _ in range(16)]
    for thread in threads:
        thread.join()
    took = time.monotonic() - began
    stop.set()
    sampler.join()

    assert errors == []
    assert most <= 2
    # Request scope needs 16 x 3 x 0.2 s / 2 connections = 4.8 s at the least.
    assert took < 4.0, took


def test_async_view_holds_no_connection_while_it_awaits(scope, settings):
    scope()
    settings.ROOT_URLCONF = "tests.backends.scope_urls"
    Item.objects.create(name="a")
    connections.close_all()

    response = asyncio.run(AsyncClient().get("/scope/await/"))

    assert response.status_code == 200
    assert response.json() == {"between": 0, "found": 2}


def test_the_scope_is_validated(scope):
    from django.core.exceptions import ImproperlyConfigured

    scope(checkout_scope="statement")
    with pytest.raises(ImproperlyConfigured, match="checkout_scope"):
        connection.ensure_connection()


def test_conn_max_age_with_transaction_scope_is_a_warning_and_holds(scope):
    from django_poolconf.conf.pool import validate_alias

    scope()
    settings_dict = connections.settings["default"]
    _, problems = validate_alias("default", {**settings_dict, "CONN_MAX_AGE": 60})
    assert "W010" in [problem.id for problem in problems]

    settings_dict["CONN_MAX_AGE"] = connection.settings_dict["CONN_MAX_AGE"] = 60
    try:
        Item.objects.count()
        assert _checked_out() == 1  # held, as CONN_MAX_AGE asks
    finally:
        connection.close()
        settings_dict["CONN_MAX_AGE"] = connection.settings_dict["CONN_MAX_AGE"] = 0


def test_an_error_inside_a_statement_keeps_the_pool_whole(scope):
    scope(pool_size=1, max_overflow=0)
    with pytest.raises(DatabaseError), connection.cursor() as cursor:
        cursor.execute("SELECT 1/0")
    assert Item.objects.count() == 0  # the connection works
    connection.close()
    assert _checked_out() == 0
    with psycopg.connect(**_params()) as plain:
        assert plain.execute("SELECT 1").fetchone() == (1,)


def _params() -> dict[str, Any]:
    settings_dict = connections["default"].settings_dict
    return {
        "host": settings_dict["HOST"],
        "port": settings_dict["PORT"],
        "user": settings_dict["USER"],
        "dbname": settings_dict["NAME"],
    }


def test_a_fresh_process_in_transaction_scope_connects(scope):
    # Django checks the server's version once per process inside the first
    # connection's setup, with a cursor of its own: closing it must not return the
    # connection being set up.
    import subprocess
    import sys

    params = _params()
    database = {
        "ENGINE": "django_poolconf.backends.postgresql",
        "NAME": params["dbname"],
        "USER": params["user"],
        "HOST": params["host"],
        "PORT": params["port"],
        "POOL": {"checkout_scope": "transaction"},
    }
    code = (
        "import django\n"
        "from django.conf import settings\n"
        f"settings.configure(DATABASES={{'default': {database!r}}},"
        " INSTALLED_APPS=['django_poolconf'])\n"
        "django.setup()\n"
        "from django.db import connection\n"
        "with connection.cursor() as cursor:\n"
        "    cursor.execute('SELECT 41 + 1')\n"
        "    print('answered', cursor.fetchone()[0])\n"
    )

    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    assert "answered 42" in run.stdout
