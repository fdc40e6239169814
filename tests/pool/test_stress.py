"""The one-owner pool under load, against the real servers: Django's and SQLAlchemy code's
checkouts mixed on a tiny pool, with faults (terminated backends, disposes, recycling,
ended threads, forks) while others wait. Every test bounds its threads: a deadlock
fails it, it does not hang the suite.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import sqlalchemy
from django.db import DatabaseError, connection, connections
from sqlalchemy import event

from django_poolconf import PoolClosed, PoolTimeout, engines, get_engine, pool_stats
from tests.conftest import server_pids, wsgi_get
from tests.pool.test_registry import _in_child

pytestmark = pytest.mark.django_db(transaction=True)

JOIN_S = 60  # far beyond any honest run on a loaded machine: past it, a deadlock


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


def _wait_for(condition: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _run(workers: list[Callable[[], None]]) -> list[BaseException]:
    """Run each worker in a thread (closing its Django connections at the end); return their errors."""
    errors: list[BaseException] = []

    def run(work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + JOIN_S
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
    stuck = [t for t in threads if t.is_alive()]
    assert not stuck, f"{len(stuck)} threads deadlocked: {get_engine().pool.status()}"
    return errors


class _OpenCount:
    """Connections of an engine open now, as its connect and close events see them."""

    def __init__(self, engine: sqlalchemy.engine.Engine) -> None:
        self.lock = threading.Lock()
        self.open: set[Any] = set()
        self.peak = 0
        event.listen(engine, "connect", self._connect)
        event.listen(engine, "close", self._close)
        event.listen(engine, "close_detached", self._close_detached)

    def _connect(self, dbapi_connection: Any, record: Any) -> None:
        with self.lock:
            self.open.add(dbapi_connection)
            self.peak = max(self.peak, len(self.open))

    def _close(self, dbapi_connection: Any, record: Any) -> None:
        with self.lock:
            self.open.discard(dbapi_connection)

    def _close_detached(self, dbapi_connection: Any) -> None:
        self._close(dbapi_connection, None)


class _Sampler:
    """Samples a pool's numbers, and the server's count of its sessions, until stopped."""

    def __init__(self, admin: psycopg.Connection[Any] | None, dbname: str) -> None:
        self.admin, self.dbname = admin, dbname
        self.stop = threading.Event()
        self.bad: list[str] = []
        self.server_peak = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            lender = engines.lender_of("default")
            if lender is not None:
                pool = lender.engine.pool
                status = pool.status()  # type: ignore[attr-defined]
                stats = lender.stats()
                if min(stats.checked_in, stats.checked_out, stats.waiting) < 0:
                    self.bad.append(status)
                if "-" in status.replace("Overflow: -", ""):
                    self.bad.append(status)
                if stats.checked_in + stats.checked_out > stats.capacity:
                    self.bad.append(status)
            if self.admin is not None:
                self.server_peak = max(
                    self.server_peak, len(server_pids(self.admin, self.dbname))
                )
            time.sleep(0.005)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def _assert_at_rest(lender: engines.Lender) -> None:
    assert _wait_for(lambda: lender.stats().checked_out == 0), lender.stats()
    stats = lender.stats()
    assert stats.waiting == 0
    assert stats.checked_in <= stats.pool_size, stats
    assert stats.checked_in == stats.pool_size + stats.overflow


@pytest.mark.parametrize(
    ("pool_size", "max_overflow"), [(1, 0), (1, 1), (2, 0), (2, 1)]
)
def test_mixed_borrowers_keep_the_budget_and_come_to_rest(
    pool_options, admin, test_db_name, pool_size, max_overflow
):
    pool_options(pool_size=pool_size, max_overflow=max_overflow, pool_timeout=30)
    engine = get_engine()
    lender = _lender()
    opened = _OpenCount(engine)
    sampler = _Sampler(admin if max_overflow == 0 else None, test_db_name)
    rounds, threads = 20, 6

    def work() -> None:
        for i in range(rounds):
            kind = i % 3
            if kind == 0:
                assert wsgi_get("/item/").status == 200
            elif kind == 1:
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            else:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1")
                connection.close()

    try:
        errors = _run([work] * threads)
    finally:
        sampler.close()
    assert not errors, errors
    assert opened.peak <= pool_size + max_overflow
    if max_overflow == 0:  # no connection closes meanwhile: the server's count is exact
        assert sampler.server_peak <= pool_size
    assert not sampler.bad, sampler.bad[:3]
    gc.collect()
    _assert_at_rest(lender)
    assert pool_stats("default").checkouts == rounds * threads
    assert _wait_for(
        lambda: len(server_pids(admin, test_db_name)) == lender.stats().checked_in
    ), (server_pids(admin, test_db_name), lender.stats())


@pytest.mark.parametrize("affinity", [True, False])
def test_waiters_are_served_in_order_of_arrival(pool_options, affinity):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=30, thread_affinity=affinity)
    engine = get_engine()
    lender = _lender()
    served: list[int] = []
    held = engine.connect()  # the only connection

    def waiter(n: int) -> Callable[[], None]:
        def django() -> None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                served.append(n)
            connection.close()

        def sqlalchemy_code() -> None:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
                served.append(n)

        return django if n % 2 else sqlalchemy_code

    errors: list[BaseException] = []
    threads = []
    for n in range(6):

        def run(n: int = n) -> None:
            try:
                waiter(n)()
            except BaseException as error:  # noqa: BLE001
                errors.append(error)
            finally:
                connections.close_all()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        assert _wait_for(lambda n=n: len(lender.line) == n + 1)
    held.close()
    for thread in threads:
        thread.join(JOIN_S)
    assert not [t for t in threads if t.is_alive()]
    assert not errors, errors
    assert served == list(range(6))
    _assert_at_rest(lender)


def test_terminated_backends_while_others_wait(pool_options, admin, test_db_name):
    pool_options(pool_size=2, max_overflow=0, pool_timeout=30, pre_ping_threshold=0)
    engine = get_engine()
    lender = _lender()
    done = threading.Event()
    unexpected: list[BaseException] = []

    def work() -> None:
        for i in range(25):
            try:
                if i % 2:
                    with engine.connect() as conn:
                        conn.exec_driver_sql("SELECT pg_sleep(0.002)")
                else:
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT pg_sleep(0.002)")
                    connection.close()
            except (DatabaseError, sqlalchemy.exc.DBAPIError) as error:
                # A terminated session; a timeout or a closed pool is not.
                if isinstance(error, (PoolTimeout, PoolClosed)):
                    unexpected.append(error)
                connection.close()

    def kill() -> None:
        with psycopg.connect(**_admin_params(admin), autocommit=True) as own:
            while not done.is_set():
                own.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND backend_type = 'client backend' "
                    "AND pid <> pg_backend_pid()",
                    [test_db_name],
                )
                time.sleep(0.03)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    try:
        errors = _run([work] * 5)
    finally:
        done.set()
        killer.join(10)
    assert not errors, errors
    assert not unexpected, unexpected[:3]
    _assert_at_rest(lender)
    # Usable again, with the full budget.
    with engine.connect() as a, engine.connect() as b:
        assert a.exec_driver_sql("SELECT 1").scalar() == 1
        assert b.exec_driver_sql("SELECT 1").scalar() == 1


def _admin_params(admin: psycopg.Connection[Any]) -> dict[str, Any]:
    info = admin.info
    return {
        "host": info.host,
        "port": info.port,
        "user": info.user,
        "dbname": "postgres",
    }


def test_dispose_all_while_threads_borrow_and_wait(pool_options, admin, test_db_name):
    pool_options(pool_size=1, max_overflow=1, pool_timeout=30)
    lenders = [_lender()]
    stop = threading.Event()

    def work() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                if i % 2:
                    with get_engine().connect() as conn:
                        conn.exec_driver_sql("SELECT pg_sleep(0.002)")
                else:
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT pg_sleep(0.002)")
                    connection.close()
            except PoolClosed:
                pass  # disposed between get_engine() and the checkout: try again

    def dispose() -> None:
        for _ in range(6):
            time.sleep(0.15)
            lender = engines.lender_of("default")
            if lender is not None and lender not in lenders:
                lenders.append(lender)
            engines.dispose_all()
        stop.set()

    errors = _run([work] * 5 + [dispose])
    assert not errors, errors[:3]
    gc.collect()
    current = _lender()
    for old in lenders:
        if old is current:
            continue
        # Every connection of a disposed pool is closed once returned.
        assert _wait_for(
            lambda old=old: old.stats().overflow == -old.stats().pool_size
        ), old.stats()
    _assert_at_rest(current)
    assert _wait_for(
        lambda: len(server_pids(admin, test_db_name)) == current.stats().checked_in
    ), (server_pids(admin, test_db_name), current.stats())


def test_user_engine_dispose_while_threads_borrow_and_wait(pool_options):
    pool_options(pool_size=2, max_overflow=0, pool_timeout=30)
    engine = get_engine()
    lender = _lender()
    opened = _OpenCount(engine)
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT pg_sleep(0.002)")
            assert wsgi_get("/item/").status == 200

    def dispose() -> None:
        for _ in range(8):
            time.sleep(0.1)
            engine.dispose()
        stop.set()

    errors = _run([work] * 5 + [dispose])
    assert not errors, errors[:3]
    assert opened.peak <= 2
    _assert_at_rest(lender)


def test_recycling_under_load_keeps_the_budget(pool_options):
    pool_options(pool_size=2, max_overflow=1, pool_timeout=30, pool_recycle=0.1)
    engine = get_engine()
    lender = _lender()
    opened = _OpenCount(engine)
    sampler = _Sampler(None, "")
    stop = time.monotonic() + 1.5

    def work() -> None:
        while time.monotonic() < stop:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT pg_sleep(0.005)")
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_sleep(0.005)")
            connection.close()

    try:
        errors = _run([work] * 5)
    finally:
        sampler.close()
    assert not errors, errors[:3]
    assert not sampler.bad, sampler.bad[:3]
    assert lender.stats().recycled > 0
    assert opened.peak <= 3
    _assert_at_rest(lender)


def test_threads_that_end_with_parked_connections_do_not_starve_the_rest(pool_options):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=5, thread_affinity=True)
    lender = _lender()
    pids: list[int] = []

    def request_then_end() -> None:
        pids.append(wsgi_get("/item/").json()["pid"])

    for _ in range(5):
        errors = _run_without_close([request_then_end] * 4)
        assert not errors, errors[:3]
    assert len(pids) == 20
    assert len(set(pids)) == 1  # one connection, passed along
    assert pool_stats("default").checkout_timeouts == 0
    gc.collect()
    _assert_at_rest(lender)


def _run_without_close(workers: list[Callable[[], None]]) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_S)
    assert not [t for t in threads if t.is_alive()]
    return errors


def test_collected_wrappers_while_another_thread_holds_the_pool_lock(pool_options):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=10, thread_affinity=False)
    lender = _lender()
    locked, release = threading.Event(), threading.Event()
    borrowed, end = threading.Event(), threading.Event()

    def borrow_and_end() -> None:
        connection.ensure_connection()
        borrowed.set()
        end.wait(30)  # ends borrowing: its wrapper is collected as it ends

    def hold() -> None:
        with lender.state.lock:
            locked.set()
            release.wait(30)

    borrower = threading.Thread(target=borrow_and_end, daemon=True)
    borrower.start()
    assert borrowed.wait(10)
    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert locked.wait(10)
    try:
        end.set()
        borrower.join(10)
        # Its wrapper's finalizer ran at the thread's end, and waited for no lock.
        assert not borrower.is_alive()
        gc.collect()
    finally:
        release.set()
        holder.join(10)
    # The orphan goes back: the only connection serves the next checkout.
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    connection.close()
    _assert_at_rest(lender)


def test_sqlalchemy_connection_collected_by_the_lock_holder_keeps_pool_size(
    pool_options,
):
    pool_options(pool_size=1, max_overflow=1, pool_timeout=5)
    engine = get_engine()
    lender = _lender()
    first, second = engine.connect(), engine.connect()  # the second is overflow
    first.exec_driver_sql("SELECT 1")
    second.exec_driver_sql("SELECT 1")
    with lender.state.lock:  # as a collection inside a section of this thread
        del first, second
        gc.collect()
    # At most pool_size stay idle: the overflow one is closed.
    assert _wait_for(lambda: lender.stats().checked_in <= 1, timeout=2), lender.stats()
    _assert_at_rest(lender)


def test_sqlalchemy_connection_collected_by_the_lock_holder_after_dispose_is_closed(
    pool_options, admin, test_db_name
):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=5)
    engine = get_engine()
    lender = _lender()
    conn = engine.connect()
    pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    engines.dispose("default")
    with lender.state.lock:  # as a collection inside a section of this thread
        del conn
        gc.collect()
    # A connection of a disposed pool is closed when returned, not kept.
    assert _wait_for(lambda: pid not in server_pids(admin, test_db_name), timeout=5)


def test_fork_while_one_thread_borrows_and_another_waits(pool_options):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=30)
    engine = get_engine()
    lender = _lender()
    held = engine.connect()
    got: list[int] = []

    def wait_for_it() -> None:
        with engine.connect() as conn:
            got.append(conn.exec_driver_sql("SELECT 1").scalar())

    waiter = threading.Thread(target=wait_for_it, daemon=True)
    waiter.start()
    assert _wait_for(lambda: len(lender.line) == 1)

    def in_child() -> int:
        stats = pool_stats("default")
        if (stats.checked_out, stats.checked_in, stats.waiting) != (0, 0, 0):
            return -1
        with get_engine().connect() as conn:
            return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar())

    try:
        child_pid = _in_child(in_child)
        assert child_pid > 0
    finally:
        held.close()
        waiter.join(JOIN_S)
    assert got == [1]
    _assert_at_rest(lender)


def test_pool_use_lifo_is_refused_by_name():
    from django_poolconf.conf.pool import validate_alias

    _, problems = validate_alias(
        "default",
        {
            "ENGINE": "django_poolconf.backends.postgresql",
            "POOL": {"pool_use_lifo": True},
        },
    )
    assert problems
    assert "pool_use_lifo" in str(problems[0])


def test_status_counts_never_go_negative_while_invalidating(pool_options):
    pool_options(pool_size=1, max_overflow=1, pool_timeout=30)
    engine = get_engine()
    lender = _lender()
    sampler = _Sampler(None, "")

    def work() -> None:
        for i in range(30):
            conn = engine.connect()
            try:
                if i % 4 == 0:
                    conn.invalidate()
                else:
                    conn.exec_driver_sql("SELECT 1")
            finally:
                conn.close()

    try:
        errors = _run([work] * 4)
    finally:
        sampler.close()
    assert not errors, errors[:3]
    assert not sampler.bad, sampler.bad[:3]
    _assert_at_rest(lender)


def test_timeouts_racing_hand_overs_lose_no_connection(pool_options):
    pool_options(pool_size=1, max_overflow=1, pool_timeout=0.02)
    engine = get_engine()
    lender = _lender()
    timeouts: list[int] = []

    def work() -> None:
        for i in range(30):
            try:
                if i % 2:
                    with engine.connect() as conn:
                        conn.exec_driver_sql("SELECT pg_sleep(0.01)")
                else:
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT pg_sleep(0.01)")
                    connection.close()
            except (PoolTimeout, sqlalchemy.exc.TimeoutError):
                timeouts.append(1)

    # Eight borrowers holding one of two connections for 10 ms each: waits of 20 ms
    # time out on any machine, while hand-overs go on.
    errors = _run([work] * 8)
    assert not errors, errors[:3]
    assert timeouts  # the race did happen
    _assert_at_rest(lender)
    with engine.connect() as a, engine.connect() as b:  # the whole budget is back
        assert (
            a.exec_driver_sql("SELECT 1").scalar()
            == b.exec_driver_sql("SELECT 1").scalar()
        )


def test_sqlalchemy_checkout_of_a_disposed_engine_opens_no_connection(
    admin, test_db_name
):
    engine = get_engine()
    lender = _lender()
    engines.dispose_all()
    assert _wait_for(lambda: not server_pids(admin, test_db_name))
    opened = lender.stats().connections_opened

    with pytest.raises(PoolClosed):
        engine.connect()

    # Refused before a connection to the database (about to be dropped) is opened.
    assert lender.stats().connections_opened == opened
