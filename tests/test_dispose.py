"""Disposing of pools: no user code under the registry's lock, no signal for expected closes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection, connections

from django_poolconf import PoolClosed, engines, get_engine, pool_stats
from django_poolconf.monitoring import connection_invalidated
from django_poolconf.pool import registry

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_pools() -> Iterator[None]:
    connections.close_all()
    engines.dispose_all()
    yield
    connections.close_all()
    engines.dispose_all()


class _ReadsThePool(logging.Handler):
    """A log handler that, like a metrics exporter, reads the pool on every record."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.busy = threading.local()
        self.calls = 0

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self.busy, "on", False) or "'default'" not in record.getMessage():
            return
        self.busy.on = True
        try:
            pool_stats("default")
            get_engine("default")
            self.calls += 1
        finally:
            self.busy.on = False


@pytest.fixture
def reads_the_pool() -> Iterator[_ReadsThePool]:
    """A log handler and a connection_invalidated receiver that call back into the pool."""
    handler = _ReadsThePool()
    package_logger = logging.getLogger("django_poolconf")
    level = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.DEBUG)

    def receiver(**kwargs: Any) -> None:
        pool_stats("default")
        get_engine("default")

    connection_invalidated.connect(receiver)
    yield handler
    connection_invalidated.disconnect(receiver)
    package_logger.removeHandler(handler)
    package_logger.setLevel(level)


def _park_a_connection(get: Callable[..., Any]) -> None:
    assert get("/item/").status == 200  # the request's end parks the connection
    assert connection._parked


def _returns(fn: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)  # only catches a hang: disposing takes milliseconds
    if thread.is_alive():
        # The thread waits forever for the registry's lock it holds itself: give the
        # rest of the suite a new lock, so that this failure is reported, not a hang.
        registry._lock = threading.Lock()
        pytest.fail("deadlocked: user code ran under the registry's lock")
    assert errors == []


@pytest.mark.parametrize(
    "dispose", [lambda: engines.dispose("default"), engines.dispose_all]
)
def test_dispose_returns_when_user_code_reads_the_pool_meanwhile(
    get, reads_the_pool, dispose
):
    _park_a_connection(get)

    _returns(dispose)

    assert reads_the_pool.calls > 0  # the handler did read the pool while disposing


def test_a_changed_pool_is_replaced_when_user_code_reads_the_pool_meanwhile(
    get, reads_the_pool, pool_options
):
    _park_a_connection(get)
    old = get_engine("default")
    # New options: the next connect disposes of the old pool and builds another.
    connections.settings["default"]["POOL"] = {
        **connections.settings["default"]["POOL"],
        "pool_size": 3,
    }

    def connect_and_close() -> None:
        try:
            connections["default"].ensure_connection()
        finally:
            connections["default"].close()  # leave nothing borrowed by a dead thread

    _returns(connect_and_close)

    assert get_engine("default") is not old


def test_disposing_closes_healthy_connections_without_connection_invalidated(get):
    """A disposed pool's connections are closed as expected, not as unusable.

    A thread of an earlier test that still held (or had parked) a connection of a
    disposed pool, and whose Django connection object the garbage collector freed
    later, made this signal fire in the middle of another test.
    """
    _park_a_connection(get)
    borrowed = threading.Event()
    give_back = threading.Event()

    def hold() -> None:
        connections["default"].ensure_connection()
        borrowed.set()
        give_back.wait(10)
        connections["default"].close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert borrowed.wait(10)
    invalidated: list[dict[str, Any]] = []

    def receiver(**kwargs: Any) -> None:
        invalidated.append(kwargs)

    connection_invalidated.connect(receiver)
    try:
        engines.dispose("default")  # closes the parked connection
        give_back.set()  # the borrowed one is closed as it comes back
        holder.join(10)
        assert not holder.is_alive()
    finally:
        give_back.set()
        connection_invalidated.disconnect(receiver)

    assert invalidated == []
    assert connection.connection is None  # the parked connection is gone


def test_a_waiter_handed_a_connection_of_a_disposed_pool_does_not_reconnect(
    pool_options,
):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=10)
    connection.ensure_connection()  # the only connection
    lender = engines.lender_of("default")
    errors: list[BaseException] = []

    def wait_for_it() -> None:
        try:
            connections["default"].ensure_connection()
        except BaseException as error:  # noqa: BLE001 - checked below
            errors.append(error)
        finally:
            connections["default"].close()

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    deadline = time.monotonic() + 10
    while not lender.line:  # the waiter stands in line
        assert time.monotonic() < deadline
        time.sleep(0.001)

    engines.dispose("default")
    connection.close()  # closed as it comes back, and handed to the waiter
    waiter.join(10)

    assert not waiter.is_alive()
    assert [type(e) for e in errors] == [PoolClosed]
    # No connection was opened for the disposed pool while it was being disposed.
    assert lender.counters.connections_opened == 1
