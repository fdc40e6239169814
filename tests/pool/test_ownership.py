"""Who owns a pooled connection: forked children, orphans, threads that end holding one."""

from __future__ import annotations

import concurrent.futures
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection, connections, transaction

from django_poolconf import PoolTimeout, dispose_all, engines, get_engine, pool_stats
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_pools() -> Iterator[None]:
    connections.close_all()
    engines.dispose_all()
    yield
    connections.close_all()


def _lender() -> engines.Lender:
    lender = get_engine().pool.lender  # type: ignore[attr-defined]
    assert lender is not None
    return lender  # type: ignore[no-any-return]


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``condition()`` became true within ``timeout`` seconds (a hang guard)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]  # type: ignore[no-any-return]


def _fork(work: Callable[[], int]) -> int:
    """Run ``work()`` in a forked child; return the child's exit code (work's result)."""
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 99
        try:
            code = work()
            connections.close_all()
            dispose_all()
        except BaseException as error:  # noqa: BLE001 - reported by the exit code
            print(f"child failed: {error!r}", file=sys.stderr, flush=True)
            code = 98
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(child, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(child, 9)
            os.waitpid(child, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.01)
    return os.waitstatus_to_exitcode(done[1])


def _child_uses_only_its_own_connections(
    parent_pids: set[int], drop: dict[str, Any] | None = None
) -> Callable[[], int]:
    """The child's work: drop what it inherited, collect, check out through Django and SQLAlchemy.

    Exit code 0 if no checkout reached a backend of the parent, 1 if one did.
    """

    def work() -> int:
        if drop is not None:
            drop.clear()  # objects of the parent's other threads the child let go
        gc.collect()  # the parent's other threads' objects, now garbage
        seen = set()
        for _ in range(3):
            seen.add(_backend_pid())
            connection.close()
        with get_engine().connect() as conn:
            seen.add(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar())
        seen.add(_backend_pid())
        connection.close()
        return 1 if seen & parent_pids else 0

    return work


class _Holder:
    """A thread that holds a pooled connection in a transaction until told to commit."""

    def __init__(self, begin: Callable[[dict[str, Any]], int]) -> None:
        self.begin = begin
        self.ready = threading.Event()
        self.go = threading.Event()
        self.errors: list[BaseException] = []
        self.pid = 0
        # What this thread holds lives only here, not in its frames: a forked child
        # inherits the frames of the parent's other threads but never frees them.
        self.held: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        held = self.held
        try:
            self.pid = self.begin(held)
        except BaseException as error:  # noqa: BLE001 - re-raised by the test
            self.errors.append(error)
            self.ready.set()
            return
        self.ready.set()
        self.go.wait(30)
        try:
            commit = held.pop("commit", None)
            if commit is not None:
                commit()
        except BaseException as error:  # noqa: BLE001 - re-raised by the test
            self.errors.append(error)
        finally:
            held.clear()
            connection.close()

    def finish(self) -> None:
        self.go.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        assert not self.errors


def _django_atomic(held: dict[str, Any]) -> int:
    atomic = transaction.atomic()
    atomic.__enter__()
    Item.objects.create(name="parent's row")
    held["commit"] = lambda: atomic.__exit__(None, None, None)
    return _backend_pid()


def _sqlalchemy_begin(held: dict[str, Any]) -> int:
    conn = get_engine().connect()
    tx = conn.begin()
    conn.exec_driver_sql("INSERT INTO testapp_item (name) VALUES ('parent''s row')")
    pid: int = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()  # type: ignore[assignment]
    held["conn"], held["tx"] = conn, tx

    def commit() -> None:
        held.pop("tx").commit()
        held.pop("conn").close()

    held["commit"] = commit
    return pid


@pytest.mark.parametrize(
    "begin", [_django_atomic, _sqlalchemy_begin], ids=["django", "sqlalchemy"]
)
def test_forked_child_leaves_another_thread_s_transaction_alone(pool_options, begin):
    pool_options(thread_affinity=False)
    holder = _Holder(begin)
    try:
        child = _child_uses_only_its_own_connections({holder.pid}, holder.held)
        assert _fork(child) == 0
    finally:
        holder.finish()
    assert list(Item.objects.values_list("name", flat=True)) == ["parent's row"]


def test_forked_child_leaves_another_thread_s_parked_connection_alone(pool_options):
    pool_options(thread_affinity=True)
    parked = threading.Event()
    done = threading.Event()
    pids: list[int] = []

    def park() -> None:
        from tests.conftest import wsgi_get

        pids.append(wsgi_get("/item/").json()["pid"])  # parked at the request's end
        parked.set()
        done.wait(30)

    thread = threading.Thread(target=park, daemon=True)
    thread.start()
    try:
        assert parked.wait(10)
        assert len(_lender().parked) == 1
        assert _fork(_child_uses_only_its_own_connections(set(pids))) == 0
    finally:
        done.set()
        thread.join(30)


def test_forked_child_refuses_a_parent_s_connection_queued_as_its_own_orphan(
    pool_options,
):
    # A collection in the fork hook can queue a parent's parked connection as an
    # orphan of the child: the child must still never lend it, not even to a waiter.
    pool_options(pool_size=1, max_overflow=0, pool_timeout=5, thread_affinity=True)
    parked = threading.Event()
    done = threading.Event()
    pids: list[int] = []

    def park() -> None:
        from tests.conftest import wsgi_get

        pids.append(wsgi_get("/item/").json()["pid"])
        parked.set()
        done.wait(30)

    thread = threading.Thread(target=park, daemon=True)
    thread.start()
    try:
        assert parked.wait(10)
        (record,) = _lender().parked.snapshot()

        def in_child() -> int:
            lender = _lender()
            connection.ensure_connection()  # the child's only connection
            seen: list[int] = []

            def wait() -> None:
                seen.append(_backend_pid())
                connection.close()

            waiter = threading.Thread(target=wait)
            waiter.start()
            assert _wait_for(lambda: bool(lender.line))
            # As the finalizer queues it, then the next checkout's first step.
            engines.ORPHANS.append(_orphan(lender, record, engines.PARKED))
            engines._return_orphans()
            connection.close()
            waiter.join(30)
            return 1 if set(seen) & set(pids) else 0

        assert _fork(in_child) == 0
    finally:
        done.set()
        thread.join(30)


def _orphan(lender: Any, record: Any, error: str | None) -> tuple[Any, ...]:
    """An ORPHANS entry as the finalizer makes it."""
    return (lender, record, error, None)


# -- connect() on a connection that holds one --------------------------------------


def test_connect_on_a_connection_that_holds_one_returns_it_first(pool_options):
    pool_options(pool_size=2, max_overflow=0, pool_timeout=0.5, thread_affinity=False)
    connection.ensure_connection()
    for _ in range(4):
        connection.connect()  # e.g. code that "reconnects" explicitly

    assert pool_stats("default").checked_out == 1
    connection.close()
    assert pool_stats("default").checked_out == 0


# -- orphans: connections of collected Django connection objects ---------------------


def _orphan_of_a_collected_wrapper() -> None:
    """Borrow through a Django connection object of this thread, then let it be collected."""
    wrapper = connections.create_connection("default")
    wrapper.ensure_connection()
    del wrapper
    gc.collect()


def test_sqlalchemy_checkout_takes_back_an_orphan(pool_options):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=2, thread_affinity=False)
    _orphan_of_a_collected_wrapper()

    with get_engine().connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    assert pool_stats("default").checked_out == 0


def test_take_back_of_a_parked_connection_returns_orphans(pool_options):
    pool_options(pool_size=2, max_overflow=0, thread_affinity=True)
    from tests.conftest import wsgi_get

    wrapper = connections.create_connection("default")
    wrapper.ensure_connection()
    wsgi_get("/item/")  # this thread's connection is parked
    del wrapper
    gc.collect()  # the other connection is an orphan now
    try:
        assert engines.ORPHANS
        connection.ensure_connection()  # takes the parked one back
        assert not engines.ORPHANS
        assert pool_stats("default").checked_out == 1
    finally:
        connection.close()


def test_waiter_in_line_is_served_by_an_orphan(pool_options):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=3, thread_affinity=False)
    wrapper = connections.create_connection("default")
    wrapper.ensure_connection()
    served: list[object] = []

    def wait() -> None:
        try:
            served.append(_backend_pid())
        except PoolTimeout as error:
            served.append(error)
        finally:
            connection.close()

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        assert _wait_for(lambda: bool(_lender().line))
        del wrapper
        gc.collect()  # its connection is an orphan now, and the waiter in line
    finally:
        waiter.join(30)
    assert len(served) == 1
    assert isinstance(served[0], int)


# -- threads that end without closing their connection -------------------------------


def _one_query_then_end() -> None:
    assert Item.objects.count() >= 0  # borrowed, and never closed


def _max_server_connections(
    admin: Any, dbname: str, stop: threading.Event
) -> list[int]:
    """Sample, in a thread, how many pooled connections the server has to ``dbname``."""
    seen = [0]

    def count() -> int:
        # An idle backend not waiting for its client is exiting: the pool closed it
        # (an overflow connection returned to a full pool) and the server has not
        # finished tearing it down. It is not a connection anymore.
        (n,) = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
            "AND application_name LIKE 'django_poolconf:%%' "
            "AND (state IS DISTINCT FROM 'idle' OR wait_event = 'ClientRead')",
            [dbname],
        ).fetchone()
        return n  # type: ignore[no-any-return]

    # Backends of earlier tests' pools may still be exiting: start from none.
    assert _wait_for(lambda: count() == 0)

    def sample() -> None:
        while not stop.is_set():
            seen[0] = max(seen[0], count())
            stop.wait(0.005)

    threading.Thread(target=sample, daemon=True).start()
    return seen


def test_threads_that_end_without_closing_do_not_exhaust_the_pool(
    pool_options, admin, test_db_name
):
    pool_options(pool_size=4, max_overflow=4, pool_timeout=2, thread_affinity=False)
    stop = threading.Event()
    most = _max_server_connections(admin, test_db_name, stop)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _one_query_then_end()
        except BaseException as error:  # noqa: BLE001 - counted below
            errors.append(error)

    try:
        threads = []
        for _ in range(1000):
            thread = threading.Thread(target=run)
            thread.start()
            threads.append(thread)
            if len(threads) >= 50:
                threads.pop(0).join(30)
        for thread in threads:
            thread.join(30)
        assert _wait_for(lambda: pool_stats("default").checked_out == 0)
    finally:
        stop.set()
    assert errors == []
    assert 0 < most[0] <= 8


def test_executor_threads_that_end_return_their_connections(
    pool_options, admin, test_db_name
):
    pool_options(pool_size=4, max_overflow=4, pool_timeout=2, thread_affinity=False)
    stop = threading.Event()
    most = _max_server_connections(admin, test_db_name, stop)
    try:
        # Each round's workers end at shutdown() holding their connections; the
        # next round's workers need those connections back.
        for _ in range(5):
            executor = concurrent.futures.ThreadPoolExecutor(max_workers=8)
            futures = [executor.submit(_one_query_then_end) for _ in range(40)]
            executor.shutdown()
            for future in futures:
                future.result()
        assert _wait_for(lambda: pool_stats("default").checked_out == 0)
    finally:
        stop.set()
    assert 0 < most[0] <= 8


def test_connection_of_an_ended_thread_comes_back_without_a_collection(
    pool_options, caplog
):
    pool_options(thread_affinity=False, leak_detection_threshold=60)
    gc.disable()  # so that only the reaper can bring it back, not the finalizer
    try:
        thread = threading.Thread(target=_one_query_then_end, name="short-lived-7")
        with caplog.at_level(logging.WARNING, logger="django_poolconf"):
            thread.start()
            thread.join(30)
            assert _wait_for(lambda: pool_stats("default").checked_out == 0)
            gc.collect()  # and the finalizer, later, returns nothing twice
            connection.ensure_connection()
            connection.close()
    finally:
        gc.enable()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "short-lived-7" in message
    assert "_one_query_then_end" in message  # where it was borrowed
    assert pool_stats("default").checked_out == 0


def test_reaper_gives_back_an_orphan_without_any_checkout(pool_options):
    pool_options(thread_affinity=False)
    _orphan_of_a_collected_wrapper()

    # The reaper pops the orphan before it gives it back: wait for both.
    assert _wait_for(
        lambda: not engines.ORPHANS and pool_stats("default").checked_out == 0
    )


def test_connection_an_ended_thread_saw_fail_is_closed_not_pooled(pool_options):
    from django.db import OperationalError

    pool_options(thread_affinity=False)
    pids: list[int] = []

    def fail() -> None:
        pids.append(_backend_pid())
        with pytest.raises(OperationalError), connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    thread = threading.Thread(target=fail)
    thread.start()
    thread.join(30)
    assert pids

    assert _wait_for(lambda: pool_stats("default").checked_out == 0)
    assert pool_stats("default").connections_invalidated == 1  # closed, not reset


def test_owner_closing_a_connection_the_reaper_returned_does_not_return_it_again(
    pool_options,
):
    pool_options(thread_affinity=False)
    wrappers: list[Any] = []

    def borrow() -> None:
        wrapper = connections.create_connection("default")
        wrapper.ensure_connection()
        wrappers.append(wrapper)  # kept alive: only the reaper can return it

    thread = threading.Thread(target=borrow)
    thread.start()
    thread.join(30)
    assert _wait_for(lambda: pool_stats("default").checked_out == 0)
    checked_in = pool_stats("default").checked_in

    (wrapper,) = wrappers
    wrapper.inc_thread_sharing()  # Django's way to close it from this thread
    wrapper.close()

    assert pool_stats("default").checked_in == checked_in
    assert pool_stats("default").checked_out == 0


def test_forked_child_leaving_the_forking_thread_s_sqlalchemy_block_sends_nothing(
    pool_options,
):
    # The fork happens inside the forking thread's own engine.begin(): the child
    # inherits the SQLAlchemy connection and leaves the block, which would COMMIT the
    # parent's transaction on the parent's socket.
    from sqlalchemy import text

    pool_options(thread_affinity=False)
    me = os.getpid()
    try:
        with get_engine().begin() as conn:
            conn.execute(text("INSERT INTO testapp_item (name) VALUES ('forked')"))
            child = os.fork()
            if child != 0:
                os.waitpid(child, 0)
                raise RuntimeError("the parent rolls back")
    except RuntimeError:
        pass
    except BaseException:  # pragma: no cover - the child: its COMMIT was refused
        if os.getpid() != me:
            os._exit(0)
        raise
    finally:
        if os.getpid() != me:  # pragma: no cover - the child
            os._exit(1)
    assert list(Item.objects.values_list("name", flat=True)) == []
    # The parent's connection was not closed by the child: it still works.
    with get_engine().connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1


def test_connection_shared_after_borrowing_is_not_reaped_while_in_use(pool_options):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=1)
    handed: dict[str, Any] = {}

    def borrow_and_share() -> None:
        wrapper = connections["default"]
        wrapper.ensure_connection()  # borrowed by this thread ...
        wrapper.inc_thread_sharing()  # ... then shared, as Django documents
        handed["wrapper"] = wrapper

    thread = threading.Thread(target=borrow_and_share)
    thread.start()
    thread.join()  # the borrowing thread has ended; the wrapper is in use elsewhere
    shared = handed["wrapper"]
    try:
        with shared.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
        _lender().reap()
        assert shared._loan in _lender().borrowed
        with pytest.raises(PoolTimeout):  # the pool's one connection is still taken
            connection.ensure_connection()
    finally:
        shared.close()
        shared.dec_thread_sharing()


def test_dispose_closes_connections_queued_as_orphans(admin, test_db_name, monkeypatch):
    # A thread's request parks its connection, the thread ends, and its Django
    # connection object is collected: the connection waits in the orphans' queue.
    # A disposal (the test runner's, before DROP DATABASE) must close it too.
    from django.core.signals import request_finished, request_started

    from django_poolconf.pool import orphans
    from tests.conftest import server_pids

    # The reaper thread would give the orphan back within a second: keep it out.
    monkeypatch.setattr(orphans.REAPER, "all", list)
    monkeypatch.setattr(orphans, "return_orphans", lambda: None)

    def request_in_a_thread() -> None:
        request_started.send(sender=None)
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
        request_finished.send(sender=None)

    before = server_pids(admin, test_db_name)
    thread = threading.Thread(target=request_in_a_thread)
    thread.start()
    thread.join()
    gc.collect()
    assert engines.ORPHANS
    dispose_all()
    # A closed connection's server process leaves pg_stat_activity a moment later.
    assert _wait_for(lambda: not server_pids(admin, test_db_name) - before)
    engines._return_orphans()  # what a later checkout or the reaper does
    assert server_pids(admin, test_db_name) - before == set()


def test_a_failed_reconnect_gives_its_place_in_the_pool_back(
    pool_options, admin, test_db_name
):
    # A record whose reconnect failed has no connection and SQLAlchemy cleared its
    # info, the owner's stamp with it: it is nobody's to keep, and must go back.
    from django.db import OperationalError

    from tests.conftest import server_pids

    pool_options(pool_size=1, max_overflow=0, pool_timeout=1, thread_affinity=False)
    pid = _backend_pid()
    connection.close()
    admin.execute(f'ALTER DATABASE "{test_db_name}" ALLOW_CONNECTIONS false')
    try:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        # Gone, not only signalled: a checkout before it exits could still use it.
        assert _wait_for(lambda: pid not in server_pids(admin, test_db_name))
        for _ in range(3):  # each checkout fails to reconnect
            with pytest.raises(OperationalError):
                connection.ensure_connection()
    finally:
        admin.execute(f'ALTER DATABASE "{test_db_name}" ALLOW_CONNECTIONS true')

    assert _backend_pid() != pid  # the one place in the pool is free again
