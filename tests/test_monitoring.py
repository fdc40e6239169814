"""Statistics, event logs, signals, leak detection and metrics, on the real server."""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any

import pytest
from django.db import connection, connections

from django_poolconf import PoolTimeout, engines, pool_stats, pool_stats_all
from django_poolconf.monitoring import (
    connection_invalidated,
    held_now,
    pool_exhausted,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_pools():
    """Counters start at zero with each pool: each test gets new pools."""
    connections.close_all()
    engines.dispose_all()
    yield
    connections.close_all()


def _in_thread(fn: Any) -> list[BaseException]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as error:  # noqa: BLE001 - returned to the test
            errors.append(error)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return errors


def test_counters_match_a_known_workload_exactly(get, admin, pool_options):
    # A Django connection object of an earlier test's thread, freed by the garbage
    # collector, gives back what it held at the next checkout, and may close it as
    # broken (connection_invalidated): let that happen before counting signals.
    gc.collect()
    connection.ensure_connection()
    connection.close()
    pool_options(pool_size=1, max_overflow=0, pool_timeout=0.2, pre_ping_threshold=3600)
    exhausted: list[dict[str, Any]] = []
    invalidated: list[dict[str, Any]] = []

    def on_exhausted(**kwargs: Any) -> None:
        exhausted.append(kwargs)

    def on_invalidated(**kwargs: Any) -> None:
        invalidated.append(kwargs)

    pool_exhausted.connect(on_exhausted)
    connection_invalidated.connect(on_invalidated)
    try:
        n, k, m = 20, 3, 4
        for _ in range(n):  # N request cycles
            assert get("/item/").status == 200
        connection.ensure_connection()  # hold the only connection ...
        for _ in range(k):  # ... so K checkouts in another thread time out
            errors = _in_thread(lambda: connections["default"].ensure_connection())
            assert len(errors) == 1 and isinstance(errors[0], PoolTimeout)
        connection.close()
        for _ in range(m):  # M connections ended by the server, found at checkout
            pid = get("/item/").json()["pid"]
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
            deadline = time.monotonic() + 10
            while admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]
            ).fetchone():
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert get("/item/").status == 200
    finally:
        pool_exhausted.disconnect(on_exhausted)
        connection_invalidated.disconnect(on_invalidated)

    stats = pool_stats("default")
    assert stats.checkouts == n + 1 + 2 * m
    assert stats.checkout_timeouts == k
    assert stats.connections_opened == 1 + m
    assert stats.connections_invalidated == m
    assert stats.connections_closed == m
    assert stats.pre_pings == m
    assert stats.pre_ping_failures == m
    assert stats.recycled == 0
    assert (stats.pool_size, stats.capacity, stats.checked_out) == (1, 1, 0)
    assert stats.checked_in == 1 and stats.waiting == 0
    assert len(exhausted) == k
    assert exhausted[0]["alias"] == "default" and exhausted[0]["timeout"] == 0.2
    assert [e["alias"] for e in invalidated] == ["default"] * m
    assert pool_stats_all()["default"] == stats


def test_wait_ms_max_covers_a_real_200_ms_wait_and_waiting_counts_it(
    pool_options, caplog
):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=10, slow_checkout_ms=100)
    connection.ensure_connection()
    got_it = threading.Event()

    def borrow() -> None:
        connections["default"].ensure_connection()
        got_it.set()

    waiter = threading.Thread(target=borrow)
    waiter.start()
    deadline = time.monotonic() + 10
    while pool_stats("default").waiting != 1:  # the waiter is blocked in the pool
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.2)
    connection.close()
    waiter.join(10)
    assert got_it.is_set()

    stats = pool_stats("default")
    assert stats.wait_ms_max >= 200
    assert stats.wait_ms_total >= stats.wait_ms_max
    assert stats.hold_ms_max >= 200  # the first borrower held it that long
    slow = [
        r
        for r in caplog.records
        if r.name == "django_poolconf.pool" and "slow_checkout_ms=100" in r.getMessage()
    ]
    assert len(slow) == 1 and slow[0].levelno == logging.WARNING
    assert "1 of 1 connections checked out" in slow[0].getMessage()


def test_leak_detection_logs_the_borrowing_stack_once(pool_options, caplog):
    pool_options(leak_detection_threshold=0.2)
    caplog.set_level(logging.INFO, logger="django_poolconf.leaks")
    connection.ensure_connection()
    time.sleep(0.5)
    connection.close()

    warnings = [
        r
        for r in caplog.records
        if r.name == "django_poolconf.leaks" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "test_leak_detection_logs_the_borrowing_stack_once" in text
    assert "held for 0." in text and "'default'" in text
    infos = [
        r
        for r in caplog.records
        if r.name == "django_poolconf.leaks" and r.levelno == logging.INFO
    ]
    assert len(infos) == 1 and "returned after 0." in infos[0].getMessage()


def test_leak_warning_names_the_request_and_view(get, pool_options, caplog):
    pool_options(leak_detection_threshold=0.2)
    assert get("/hold/", s="0.5").status == 200

    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "django_poolconf.leaks" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert "during request '/hold/' (view tests.urls.hold_connection)" in warnings[0]


def test_without_the_threshold_nothing_is_watched_or_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="django_poolconf.leaks")
    connection.ensure_connection()
    assert list(held_now()) == []  # no stack captured
    time.sleep(0.5)
    connection.close()
    assert not [r for r in caplog.records if r.name == "django_poolconf.leaks"]


def test_invalidation_is_logged_with_its_reason_and_no_server_detail(
    get, admin, pool_options, caplog
):
    pool_options(pre_ping_threshold=3600)
    pid = get("/item/").json()["pid"]
    admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    time.sleep(0.2)
    assert get("/item/").status == 200

    messages = [
        r.getMessage()
        for r in caplog.records
        if r.name == "django_poolconf.pool" and r.levelno == logging.WARNING
    ]
    assert (
        "closing a connection of 'default': closed, or no answer to a ping within 5 s"
        in messages
    )
    settings_dict = connections["default"].settings_dict
    for message in messages:
        assert str(settings_dict["PORT"]) not in message
        assert settings_dict["NAME"] not in message


def test_prometheus_exposition_has_the_documented_metrics(get):
    from prometheus_client import REGISTRY, generate_latest

    for _ in range(5):
        get("/item/")
    text = generate_latest(REGISTRY).decode()
    stats = pool_stats("default")

    labels = '{alias="default",role="primary"}'
    assert f"django_poolconf_checkouts_total{labels} {float(stats.checkouts)}" in text
    assert f"django_poolconf_capacity{labels} 8.0" in text
    assert f"django_poolconf_checked_out{labels} 0.0" in text
    assert f"django_poolconf_connections_opened_total{labels} 1.0" in text
    assert (
        'django_poolconf_hold_seconds_count{alias="default",role="primary"} '
        f"{float(stats.checkouts)}"
    ) in text
    assert (
        'django_poolconf_checkout_wait_seconds_bucket{alias="default",le="+Inf",role="primary"}'
        in text
    )


def test_multiprocess_mode_files_carry_each_workers_numbers(tmp_path):
    """Under gunicorn's multiprocess mode, a scrape reads what each worker wrote."""
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    settings_dict = connections["default"].settings_dict
    worker = f"""
import django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["django_poolconf"],
    DATABASES={{"default": {{
        "ENGINE": "django_poolconf.backends.postgresql", "NAME": "postgres",
        "USER": {settings_dict["USER"]!r}, "HOST": {settings_dict["HOST"]!r},
        "PORT": {str(settings_dict["PORT"])!r},
    }}}},
)
django.setup()
from django.db import connection
for _ in range({{n}}):
    connection.ensure_connection()
    connection.close()
from django_poolconf.metrics import write_multiprocess
write_multiprocess()
"""
    env = {**__import__("os").environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for n in (3, 4):  # two workers
        subprocess.run(
            [sys.executable, "-c", worker.replace("{n}", str(n))],
            env=env,
            check=True,
            timeout=60,
        )
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    text = generate_latest(registry).decode()
    assert 'django_poolconf_checkouts_total{alias="default",role="primary"} 7.0' in text


def test_a_failing_signal_receiver_neither_leaks_nor_hides_the_error(
    get, admin, pool_options, caplog
):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=0.2, pre_ping_threshold=3600)

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    connection_invalidated.connect(broken)
    pool_exhausted.connect(broken)
    try:
        pid = get("/item/").json()["pid"]
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        time.sleep(0.2)
        assert get("/item/").status == 200  # the invalidation went on
        connection.ensure_connection()
        errors = _in_thread(lambda: connections["default"].ensure_connection())
        connection.close()
    finally:
        connection_invalidated.disconnect(broken)
        pool_exhausted.disconnect(broken)

    assert len(errors) == 1 and isinstance(errors[0], PoolTimeout)
    assert engines.get_engine().pool.checkedout() == 0
    assert "a receiver of a django_poolconf signal raised RuntimeError" in caplog.text


def test_sqlalchemy_invalidation_ends_the_loan(pool_options):
    pool_options(leak_detection_threshold=60)
    engine = engines.get_engine()
    conn = engine.connect()
    assert len(list(held_now())) == 1
    conn.invalidate()
    conn.close()

    assert list(held_now()) == []
    stats = pool_stats("default")
    assert stats.checkouts == 1 and stats.hold_ms_total > 0
