"""Thread affinity: a connection parked with its Django connection object between requests."""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any

import pytest
import sqlalchemy
from django.db import OperationalError, connection, connections, transaction
from django.db.backends.signals import connection_created

from django_poolconf import (
    PoolTimeout,
    TooManyRequests,
    engines,
    get_engine,
    pool_stats,
)
from tests.conftest import server_pids, wsgi_get
from tests.pool.test_registry import _in_child

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_pools():
    connections.close_all()
    engines.dispose_all()
    yield
    connections.close_all()


def _lender() -> engines.Lender:
    lender = get_engine().pool.lender  # type: ignore[attr-defined]
    assert lender is not None
    return lender  # type: ignore[no-any-return]


def _in_thread(fn: Any) -> Any:
    """Run ``fn`` in a thread that ends without closing its connections; return its result."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as error:  # noqa: BLE001 - re-raised below
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    if errors:
        raise errors[0]
    return result[0]


def test_request_end_parks_the_connection_and_the_next_request_takes_it_back():
    first = wsgi_get("/item/").json()["pid"]

    # Idle for the pool and its statistics, yet kept for this thread.
    pool = get_engine().pool
    assert (pool.checkedout(), pool.checkedin()) == (0, 1)  # type: ignore[attr-defined]
    assert len(_lender().parked) == 1
    assert not _lender().state.idle  # parked, not in the pool's idle records
    stats = pool_stats("default")
    assert (stats.checked_out, stats.checked_in, stats.checkouts) == (0, 1, 1)

    assert wsgi_get("/item/").json()["pid"] == first
    assert pool_stats("default").checkouts == 2


def test_another_thread_takes_a_parked_connection_when_none_is_idle(pool_options):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=5)
    mine = wsgi_get("/item/").json()["pid"]

    started = time.monotonic()
    theirs = _in_thread(lambda: wsgi_get("/item/").json()["pid"])

    # Taken at once, not after pool_timeout; the thread ended holding it parked,
    # and this thread takes it back from there.
    assert time.monotonic() - started < 2
    assert theirs == mine
    assert wsgi_get("/item/").json()["pid"] == mine
    assert pool_stats("default").checkout_timeouts == 0


def test_owner_never_reaches_a_parked_connection_another_borrower_took(pool_options):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=0.3)
    wsgi_get("/item/")
    holding = threading.Event()
    release = threading.Event()
    taken: list[Any] = []

    def borrow_and_hold() -> None:
        try:
            with transaction.atomic():
                taken.append(connections["default"].connection)
                holding.set()
                release.wait(10)
        finally:
            connections.close_all()

    thief = threading.Thread(target=borrow_and_hold)
    thief.start()
    try:
        assert holding.wait(10)
        # The driver connection this object parked is in another thread's
        # transaction: this object must not hand it out.
        assert connection.connection is None
        assert taken[0] is not None
        with pytest.raises(PoolTimeout):
            connection.ensure_connection()
    finally:
        release.set()
        thief.join(10)
    assert wsgi_get("/item/").status == 200


def test_sqlalchemy_code_takes_a_parked_connection(pool_options):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=5)
    pid = wsgi_get("/item/").json()["pid"]

    started = time.monotonic()
    with get_engine().connect() as sa_connection:
        seen = sa_connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()

    assert time.monotonic() - started < 2
    assert seen == pid
    assert wsgi_get("/item/").json()["pid"] == pid


def test_sqlalchemy_waiter_gets_a_connection_parked_while_it_waits(pool_options):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=5)
    connection.ensure_connection()  # borrowed: SQLAlchemy code has to wait
    got: list[float] = []

    def sqlalchemy_checkout() -> None:
        began = time.monotonic()
        with get_engine().connect() as sa_connection:
            sa_connection.exec_driver_sql("SELECT 1")
        got.append(time.monotonic() - began)

    waiter = threading.Thread(target=sqlalchemy_checkout)
    waiter.start()
    deadline = time.monotonic() + 5
    while not _lender().line and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _lender().line  # it waits in the line
    connection.close_if_unusable_or_obsolete()  # what request_finished does
    waiter.join(10)

    assert got and got[0] < 2


def test_without_thread_affinity_request_end_checks_the_connection_in(pool_options):
    pool_options(thread_affinity=False)
    wsgi_get("/item/")

    assert not _lender().parked
    assert len(_lender().state.idle) == 1
    assert connection.connection is None


def test_close_checks_a_parked_connection_into_the_pool():
    pid = wsgi_get("/item/").json()["pid"]

    connection.close()

    assert not _lender().parked
    assert len(_lender().state.idle) == 1
    assert wsgi_get("/item/").json()["pid"] == pid


def test_parked_connection_due_for_recycling_is_replaced_and_set_up(
    admin, test_db_name, pool_options
):
    pool_options(pool_recycle=0.3)
    created: list[int] = []

    def receiver(sender: Any, connection: Any, **kwargs: Any) -> None:
        created.append(connection.connection.info.backend_pid)

    connection_created.connect(receiver)
    try:
        first = wsgi_get("/item/").json()["pid"]
        time.sleep(0.5)
        second = wsgi_get("/item/").json()["pid"]
    finally:
        connection_created.disconnect(receiver)

    assert second != first
    # Django set the new connection up, as any new one.
    assert created == [first, second]
    deadline = time.monotonic() + 5
    while first in server_pids(admin, test_db_name) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first not in server_pids(admin, test_db_name)


def test_transaction_left_open_is_not_parked(get):
    # A view that leaves autocommit off is Django's "close it" case: not parked.
    connection.ensure_connection()
    connection.set_autocommit(False)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    connection.close_if_unusable_or_obsolete()

    assert not _lender().parked
    assert connection.connection is None
    assert get("/item/").status == 200


def test_idle_connections_beyond_pool_size_are_closed_parked_or_not(
    admin, test_db_name, pool_options
):
    pool_options(pool_size=1, max_overflow=1)
    connection.ensure_connection()  # this thread holds one ...
    held = connection.connection.info.backend_pid

    # ... so this request opens the overflow connection, and parks it.
    other = _in_thread(lambda: wsgi_get("/item/").json()["pid"])
    assert other != held
    assert len(_lender().parked) == 1

    connection.close_if_unusable_or_obsolete()  # this thread's request ends

    # One idle connection is pool_size: the second is closed, not kept.
    pool = get_engine().pool
    assert (pool.checkedin(), pool.checkedout()) == (1, 0)  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while len(server_pids(admin, test_db_name)) > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(server_pids(admin, test_db_name)) == 1


def test_sqlalchemy_return_goes_straight_to_the_first_waiter(pool_options):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=5)
    sa_connection = get_engine().connect()
    waiter = threading.Thread(target=lambda: wsgi_get("/item/"))
    waiter.start()
    try:
        deadline = time.monotonic() + 5
        while not _lender().line and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _lender().line
    finally:
        sa_connection.close()
    # Handed to the waiter on return, not queued for the waiter to find later.
    assert not _lender().line
    assert not _lender().state.idle
    waiter.join(10)


def test_forked_child_lends_parked_connections_to_sqlalchemy_code(pool_options):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=1)
    get_engine()  # the parent built the pool before the fork

    def in_child() -> int:
        wsgi_get("/item/")  # parks the child's connection
        with get_engine().connect() as sa_connection:
            sa_connection.exec_driver_sql("SELECT 1")
        pool = get_engine().pool
        return int((pool.checkedin(), pool.checkedout()) == (1, 0))  # type: ignore[attr-defined]

    assert _in_child(in_child) == 1


def test_replacing_a_parked_connection_checks_it_in(pool_options):
    pool_options(pool_size=2, max_overflow=0)
    connection.ensure_connection()  # one borrowed here ...
    _in_thread(lambda: wsgi_get("/item/"))  # ... so another opens, parked there
    connection.close()
    wsgi_get("/item/")  # parks one here
    assert len(_lender().parked) >= 1

    connection.connection = None  # code that swaps the attribute (Django never does)
    connection.ensure_connection()
    connection.close_if_unusable_or_obsolete()  # parks again, under the same key

    # Both connections idle: none lost under an overwritten key.
    pool = get_engine().pool
    assert (pool.checkedout(), pool.checkedin()) == (0, 2)  # type: ignore[attr-defined]


def test_return_by_a_thread_holding_the_line_lock_does_not_deadlock(pool_options):
    # The garbage collector can return a SQLAlchemy connection in any thread, even
    # one holding the line's lock: the return must not wait for that lock.
    pool_options(pool_size=1, max_overflow=0, pool_timeout=5)
    sa_connection = get_engine().connect()
    served: list[int] = []
    waiter = threading.Thread(
        target=lambda: served.append(wsgi_get("/item/").status), daemon=True
    )
    waiter.start()
    deadline = time.monotonic() + 5
    while not _lender().line and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _lender().line
    lender = _lender()

    def return_holding_the_lock() -> None:
        with lender.line.lock:
            sa_connection.close()

    returner = threading.Thread(target=return_holding_the_lock, daemon=True)
    returner.start()
    returner.join(5)
    assert not returner.is_alive()
    waiter.join(5)
    assert served == [200]


def test_connection_parked_by_a_collected_object_goes_back_without_a_warning(caplog):
    pid = _in_thread(lambda: wsgi_get("/item/").json()["pid"])
    gc.collect()  # the ended thread's Django connection object

    with caplog.at_level(logging.WARNING, logger="django_poolconf"):
        assert wsgi_get("/item/").json()["pid"] == pid
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not engines.ORPHANS


def test_engine_dispose_closes_parked_connections_and_keeps_lending(
    admin, test_db_name
):
    pid = wsgi_get("/item/").json()["pid"]
    lender = _lender()

    get_engine().dispose()  # what the docs say not to do, but someone will

    deadline = time.monotonic() + 5
    while pid in server_pids(admin, test_db_name) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pid not in server_pids(admin, test_db_name)
    assert get_engine().pool.lender is lender  # type: ignore[attr-defined]
    assert wsgi_get("/item/").status == 200


def test_engine_dispose_keeps_the_budget_and_replaces_what_was_borrowed(
    admin, test_db_name, pool_options
):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=0.2, thread_affinity=False)
    with connection.cursor() as cursor:  # the only connection, borrowed
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()

    get_engine().dispose()

    # Still borrowed, still counted: no connection beyond the budget.
    with pytest.raises(sqlalchemy.exc.TimeoutError):
        get_engine().connect()
    connection.close()  # back in the pool, but opened before the dispose ...
    with get_engine().connect() as sa_connection:  # ... so replaced at its checkout
        new_pid = sa_connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    assert new_pid != pid
    deadline = time.monotonic() + 5  # the server sees the close a moment later
    while pid in server_pids(admin, test_db_name) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pid not in server_pids(admin, test_db_name)


# -- max_waiting ---------------------------------------------------------------------


def test_a_checkout_beyond_max_waiting_fails_at_once_and_the_line_is_served(
    pool_options,
):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=20, max_waiting=1)
    connection.ensure_connection()  # the only connection, borrowed
    served: list[float] = []

    def wait_in_line() -> None:
        began = time.monotonic()
        with get_engine().connect() as sa_connection:
            sa_connection.exec_driver_sql("SELECT 1")
        served.append(time.monotonic() - began)

    waiter = threading.Thread(target=wait_in_line)
    waiter.start()
    deadline = time.monotonic() + 10
    while not _lender().line and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(_lender().line) == 1

    refused: list[BaseException] = []

    def django_checkout() -> None:
        try:
            connections["default"].ensure_connection()
        except BaseException as error:  # noqa: BLE001 - inspected below
            refused.append(error)
        finally:
            connections["default"].close()

    began = time.monotonic()
    _in_thread(django_checkout)  # a Django checkout: refused, not queued
    with pytest.raises(TooManyRequests) as sqlalchemy_refused:
        get_engine().connect()  # SQLAlchemy code's too
    assert time.monotonic() - began < 10  # at once: not after pool_timeout

    [error] = refused
    assert isinstance(error, TooManyRequests)
    assert isinstance(error, PoolTimeout)
    assert isinstance(error, OperationalError)
    message = (
        "No connection for 'default': 1 checkout waits already "
        "(max_waiting=1, pool_size=1, max_overflow=0)."
    )
    assert str(error) == message
    assert str(sqlalchemy_refused.value) == message
    assert pool_stats("default").checkout_refusals == 2

    connection.close()  # the one in line is served
    waiter.join(10)
    assert len(served) == 1
    assert pool_stats("default").waiting == 0


def test_max_waiting_0_queues_every_checkout(pool_options):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=20, max_waiting=0)
    connection.ensure_connection()
    done: list[int] = []

    def wait_in_line() -> None:
        with get_engine().connect() as sa_connection:
            done.append(sa_connection.exec_driver_sql("SELECT 1").scalar())

    waiters = [threading.Thread(target=wait_in_line) for _ in range(4)]
    for waiter in waiters:
        waiter.start()
    deadline = time.monotonic() + 10
    while len(_lender().line) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool_stats("default").waiting == 4

    connection.close()
    for waiter in waiters:
        waiter.join(20)
    assert done == [1, 1, 1, 1]
    assert pool_stats("default").checkout_refusals == 0


# -- review of issue 14 -------------------------------------------------------------------


def test_max_waiting_is_exact_when_many_checkouts_arrive_at_once(pool_options):
    # N + k threads at once on a full pool: exactly max_waiting wait, k are refused,
    # whatever the interleaving; then every one in line is served.
    max_waiting, threads = 3, 8
    pool_options(pool_size=1, max_overflow=0, pool_timeout=30, max_waiting=max_waiting)
    for _ in range(3):
        held = get_engine().connect()  # the only connection
        start = threading.Barrier(threads)
        outcomes: list[str] = []
        lock = threading.Lock()

        def checkout(
            start: threading.Barrier = start,
            lock: threading.Lock = lock,
            outcomes: list[str] = outcomes,
        ) -> None:
            start.wait(10)
            try:
                with get_engine().connect() as sa_connection:
                    sa_connection.exec_driver_sql("SELECT 1")
                outcome = "served"
            except TooManyRequests:
                outcome = "refused"
            with lock:
                outcomes.append(outcome)

        workers = [threading.Thread(target=checkout) for _ in range(threads)]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with lock:
                refused = outcomes.count("refused")
            if refused == threads - max_waiting and len(_lender().line) == max_waiting:
                break
            time.sleep(0.01)
        with lock:
            early = list(outcomes)
        held.close()
        for worker in workers:
            worker.join(30)
        assert sorted(early) == ["refused"] * (threads - max_waiting)
        assert sorted(outcomes) == sorted(
            ["refused"] * (threads - max_waiting) + ["served"] * max_waiting
        )
        assert len(_lender().line) == 0
