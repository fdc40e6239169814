"""Network faults between the pool and the primary, through a TCP proxy on loopback.

The default alias is pointed at :class:`tests.proxy.FaultProxy`, which drops, stalls
or refuses on demand. Each test bounds what a caller waits while the path is broken,
and measures how long the pool takes to serve again once it is restored, with no
restart. The measurements go to docs/reliability.rst.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import OperationalError, connection, connections
from django.test import override_settings

from django_poolconf import ConnectionFailed, get_engine, pool_stats
from django_poolconf.health import check_health, runner
from tests.conftest import wsgi_get
from tests.measure import measured
from tests.proxy import FaultProxy

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(90),
]

#: Beyond a bound, what scheduling on a loaded two-core machine may add.
SLACK_S = 1.5


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    try:
        result = call()
    except Exception as error:  # noqa: BLE001 - the test looks at it
        result = error
    return result, time.monotonic() - started


def _until_served(deadline_s: float = 30.0) -> float:
    """Seconds until a request is served again; fails after ``deadline_s``."""
    started = time.monotonic()
    while True:
        response = wsgi_get("/item/")
        if response.status == 200:
            return time.monotonic() - started
        assert time.monotonic() - started < deadline_s, response.body[:300]
        time.sleep(0.05)


def _no_thread_left(before: set[threading.Thread], within_s: float = 10.0) -> None:
    """Every thread started since ``before`` ends: none hangs on the broken path."""
    deadline = time.monotonic() + within_s
    while True:
        left = [
            t
            for t in threading.enumerate()
            if t not in before
            and t.is_alive()
            and not t.name.startswith("proxy ")
            # The pool's own long-lived workers (the reaper of ended threads' loans).
            and not t.name.startswith("django_poolconf reaper")
        ]
        if not left:
            return
        assert time.monotonic() < deadline, [t.name for t in left]
        time.sleep(0.05)


# -- drop: every connection reset -------------------------------------------------------


def test_dropped_idle_connections_are_replaced_without_an_error(proxy, pool_options):
    # Pinged only when the server visibly closed them: the reset is visible.
    pool_options(pre_ping_threshold=3600)
    with ThreadPoolExecutor(3) as executor:
        before = set(
            executor.map(lambda _: wsgi_get("/hold/", s="0.3").json()["pid"], range(3))
        )

    dropped = proxy.drop()
    response, took = _timed(lambda: wsgi_get("/item/"))
    measured("drop, idle connections: first request served after", took)

    assert dropped >= 3
    assert response.status == 200
    assert response.json()["pid"] not in before
    assert took < SLACK_S
    assert pool_stats("default").connections_invalidated >= 1


def test_a_query_in_flight_when_the_connection_drops_fails_at_once(proxy):
    wsgi_get("/item/")
    outcome: list[Any] = []
    worker = threading.Thread(
        target=lambda: outcome.append(wsgi_get("/sql/", q="SELECT pg_sleep(5)"))
    )
    worker.start()
    _wait_for(lambda: _busy(proxy), "the query to start")

    proxy.drop()
    dropped_at = time.monotonic()
    worker.join(timeout=10)
    failed_after = measured(
        "drop, query in flight: error after", time.monotonic() - dropped_at
    )
    recovery = measured("drop, query in flight: served again after", _until_served())

    assert not worker.is_alive()
    assert outcome[0].status == 500
    assert failed_after < SLACK_S
    assert recovery < SLACK_S
    assert get_engine().pool.checkedout() == 0


def test_forgotten_idle_flows_are_found_by_the_ping_and_replaced(proxy, pool_options):
    # A NAT or load balancer forgot the flows of idle connections: the client hears
    # of it only when it sends, as the ping does for a connection idle this long.
    pool_options(pre_ping_threshold=0)
    first = wsgi_get("/item/").json()["pid"]
    proxy.settled()  # the reset sent on return has been answered

    forgotten = proxy.forget()
    response, took = _timed(lambda: wsgi_get("/item/"))
    measured("forgotten flows, pinged: first request served after", took)

    assert forgotten == 1
    assert response.status == 200
    assert response.json()["pid"] != first
    assert took < SLACK_S
    assert pool_stats("default").pre_ping_failures == 1


def test_a_forgotten_flow_used_within_the_ping_threshold_fails_once(
    proxy, pool_options
):
    # Returned less than pre_ping_threshold ago: not pinged, by design. Its first
    # query meets the RST, the caller gets the error, and the pool is replaced.
    pool_options(pre_ping_threshold=3600)
    wsgi_get("/item/")
    proxy.settled()

    proxy.forget()
    failed = wsgi_get("/item/")
    served = wsgi_get("/item/")

    assert failed.status == 500
    assert served.status == 200


# -- stall: nothing forwarded -----------------------------------------------------------


def test_a_new_connection_in_a_stall_fails_within_connect_timeout(proxy, pool_options):
    pool_options(connect_timeout=2)
    threads = set(threading.enumerate())
    proxy.stall()

    error, took = _timed(connection.ensure_connection)
    measured("stall, new connection: error after", took)
    proxy.restore()
    recovery = measured("stall, new connection: served after restore", _until_served())

    assert isinstance(error, ConnectionFailed)
    assert "timeout expired" in str(error)
    assert f"port {proxy.port}" in str(error)
    assert 2 - 0.1 <= took < 2 + SLACK_S
    assert recovery < SLACK_S
    connections.close_all()
    _no_thread_left(threads)


def test_an_idle_connection_in_a_stall_costs_at_most_the_ping_and_a_connect(
    proxy, pool_options
):
    pool_options(pre_ping_threshold=0, validation_timeout=0.5, connect_timeout=2)
    first = wsgi_get("/item/").json()["pid"]
    proxy.stall()

    threads = set(threading.enumerate())
    # Not a whole request: Django 4.2's error report renders the view's QuerySets,
    # and each rendering borrows again.
    error, took = _timed(connection.ensure_connection)
    measured("stall, idle connection: error after", took)
    proxy.restore()
    recovery = measured("stall, idle connection: served after restore", _until_served())
    _no_thread_left(threads)

    assert isinstance(error, ConnectionFailed)
    assert 0.5 <= took < 0.5 + 2 + SLACK_S
    assert recovery < SLACK_S
    assert wsgi_get("/item/").json()["pid"] != first


def test_health_answers_within_its_timeout_in_a_stall(proxy):
    wsgi_get("/item/")
    threads = set(threading.enumerate())
    proxy.stall()
    with override_settings(POOLCONF={"HEALTH": {"TIMEOUT": 1, "CACHE": 0}}):
        report, took = _timed(lambda: check_health(["default"]))
        view, view_took = _timed(lambda: wsgi_get("/health/db"))
        measured("stall, /health/db answered after", view_took)
        proxy.restore()
        runner._probes.clear()
        healthy_again, _ = _timed(lambda: check_health(["default"]))
    _no_thread_left(threads)

    assert report["default"].reason == "timeout"
    assert took < 1 + SLACK_S
    assert view.status == 503
    assert view_took < 1 + SLACK_S
    assert healthy_again.status == "healthy"


def test_a_query_in_flight_when_the_path_stalls_fails_within_read_timeout(
    proxy, pool_options
):
    # The server's statement_timeout cannot help: its error is lost in the stall too.
    pool_options(statement_timeout=1000, read_timeout=2)
    wsgi_get("/item/")
    outcome: list[Any] = []
    worker = threading.Thread(
        target=lambda: outcome.append(wsgi_get("/sql/", q="SELECT pg_sleep(0.5)"))
    )
    worker.start()
    _wait_for(lambda: _busy(proxy), "the query to start")
    proxy.stall()
    stalled_at = time.monotonic()
    try:
        worker.join(timeout=2 + SLACK_S + 5)
        failed_after = measured(
            "stall, query in flight (read_timeout=2): error after",
            time.monotonic() - stalled_at,
        )
        bounded = not worker.is_alive()
    finally:
        proxy.restore()
        worker.join(timeout=10)
    recovery = measured("stall, query in flight: served after restore", _until_served())

    assert bounded
    assert outcome[0].status == 500
    assert 1 <= failed_after < 2 + SLACK_S
    assert recovery < SLACK_S


def test_without_read_timeout_a_query_in_flight_waits_out_the_stall(
    proxy, pool_options
):
    # What read_timeout is for: nothing else of the pool's bounds this wait.
    pool_options(statement_timeout=1000)
    wsgi_get("/item/")
    outcome: list[Any] = []
    worker = threading.Thread(
        target=lambda: outcome.append(wsgi_get("/sql/", q="SELECT pg_sleep(0.5)"))
    )
    worker.start()
    _wait_for(lambda: _busy(proxy), "the query to start")
    proxy.stall()
    try:
        worker.join(timeout=3)
        waiting = worker.is_alive()
    finally:
        proxy.restore()
        worker.join(timeout=10)

    assert waiting
    assert outcome[0].status == 200  # the held answer arrived: nothing was lost


def test_read_timeout_cuts_a_statement_that_outlasts_it_and_spares_the_others(
    pool_options,
):
    pool_options(read_timeout=1)
    quick = wsgi_get("/sql/", q="SELECT pg_sleep(0.2)")
    started = time.monotonic()
    slow = wsgi_get("/sql/", q="SELECT pg_sleep(3)")
    took = time.monotonic() - started
    after = wsgi_get("/item/")

    assert quick.status == 200
    assert slow.status == 500
    assert 1 - 0.1 <= took < 1 + SLACK_S
    assert after.status == 200


# -- refuse: nothing listening ----------------------------------------------------------


def test_refused_connections_fail_at_once_and_open_connections_go_on(
    proxy, pool_options
):
    pool_options(thread_affinity=False)
    kept = wsgi_get("/item/").json()["pid"]
    proxy.refuse()

    served = wsgi_get("/item/")
    with get_engine().connect():  # the idle connection is now checked out
        error, took = _timed(connection.ensure_connection)
    measured("refused, new connection: error after", took)
    proxy.restore()
    with get_engine().connect() as conn:  # a new connection opens again
        reopened = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with get_engine().connect() as other:
            other.exec_driver_sql("SELECT 1")
    connection.close()

    assert served.status == 200
    assert served.json()["pid"] == kept
    assert isinstance(error, OperationalError)
    assert "Connection refused" in str(error)
    assert f"(host '127.0.0.1', port {proxy.port})" in str(error)
    assert took < SLACK_S
    assert reopened


# -- helpers ---------------------------------------------------------------------------


def _busy(proxy: FaultProxy) -> bool:
    import psycopg

    settings_dict = connections["default"].settings_dict
    with psycopg.connect(
        host=proxy.target[0],
        port=proxy.target[1],
        user=settings_dict["USER"],
        dbname="postgres",
        autocommit=True,
    ) as admin:
        (count,) = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%%'"
            " AND state = 'active' AND pid <> pg_backend_pid()"
        ).fetchone()
    return bool(count)


def _wait_for(condition: Callable[[], bool], what: str, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {within_s} s for {what}"
        time.sleep(0.02)
