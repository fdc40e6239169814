"""The pooled PostgreSQL backend against a real server: checkout, checkin, reset, faults."""

from __future__ import annotations

import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from django.db import InternalError, OperationalError, connection, connections

from django_poolconf import PoolTimeout, ReadOnlyServer, engines, get_engine
from django_poolconf.backends.postgresql.redact import redact
from django_poolconf.signals import physical_connection_created
from tests.conftest import server_pids, wsgi_get
from tests.measure import measured

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_pools():
    """Each test starts with empty pools, whatever the test before it left."""
    connections.close_all()
    engines.dispose_all()


def _statements(admin: psycopg.Connection[Any], dbname: str) -> dict[str, int]:
    rows = admin.execute(
        "SELECT query, calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
        "WHERE d.datname = %s",
        [dbname],
    ).fetchall()
    return dict(rows)


def _reset_statements(admin: psycopg.Connection[Any]) -> None:
    admin.execute("SELECT pg_stat_statements_reset()")


def test_request_reuses_one_pooled_connection(get):
    pids = {get("/item/").json()["pid"] for _ in range(20)}

    assert len(pids) == 1
    pool = get_engine().pool
    assert (pool.checkedout(), pool.checkedin()) == (0, 1)  # idle at request end


def test_physical_connection_created_is_sent_once_per_physical_connection(get):
    seen: list[int] = []

    def receiver(sender: Any, connection: Any, **kwargs: Any) -> None:
        seen.append(connection.connection.info.backend_pid)

    physical_connection_created.connect(receiver)
    try:
        pids = {get("/item/").json()["pid"] for _ in range(30)}
    finally:
        physical_connection_created.disconnect(receiver)

    assert len(seen) == len(pids) <= 1


def test_steady_state_costs_no_extra_round_trip(get, admin, test_db_name):
    get("/item/")  # open and initialize the connection
    connection.ensure_connection()  # collect its reset
    _reset_statements(admin)

    for _ in range(50):
        get("/item/")
    connection.ensure_connection()  # collect the last reset

    statements = _statements(admin, test_db_name)
    view = [query for query in statements if "testapp_item" in query]
    # The view's query, and the reset sent with each return but not waited for (50,
    # and one for the connection taken back above): no ping, no ROLLBACK, no SET, no
    # SELECT 1.
    assert view and statements == {view[0]: 50, "DISCARD ALL": 51}, statements


def test_return_does_not_wait_for_the_reset():
    connection.ensure_connection()
    raw = connection.connection
    connection.close()

    # Sent, and its result not read yet: the next checkout collects it.
    assert raw.pgconn.transaction_status == psycopg.pq.TransactionStatus.ACTIVE
    connection.ensure_connection()
    assert connection.connection is raw
    assert raw.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_idle_connection_is_pinged_on_checkout(get, admin, test_db_name, pool_options):
    pool_options(pre_ping_threshold=0.2)
    get("/item/")
    _reset_statements(admin)

    time.sleep(0.3)
    get("/item/")
    get("/item/")  # used a moment ago: no ping

    statements = _statements(admin, test_db_name)
    assert statements.get("SELECT $1") == 1, statements  # normalized "SELECT 1"


def test_pool_of_4_plus_4_opens_at_most_8_connections_under_32_threads(
    get, admin, test_db_name, cluster, pool_options
):
    # The default pool_timeout (30 s), not the suite's 10 s: QueuePool's waiters are
    # not served in order, and in this tight loop a returning thread can take its
    # connection back again before a woken waiter runs (see the benchmarks'
    # contention figures). A 10 s starvation was seen once in CI.
    pool_options(pool_timeout=30)
    log = cluster.primary.data_dir / "server.log"
    log_start = log.stat().st_size
    stop = threading.Event()
    most_at_once = 0

    def watch() -> None:
        nonlocal most_at_once
        # Autocommit: inside one transaction pg_stat_activity is a frozen snapshot.
        with psycopg.connect(admin.info.dsn, autocommit=True) as watcher:
            while not stop.is_set():
                pids = server_pids(watcher, test_db_name)
                most_at_once = max(most_at_once, len(pids))
                time.sleep(0.005)

    def worker() -> tuple[set[int], int]:
        pids, errors = set(), 0
        try:
            for _ in range(200):
                response = wsgi_get("/item/")
                if response.status == 200:
                    pids.add(response.json()["pid"])
                else:
                    errors += 1
        finally:
            connections.close_all()
        return pids, errors

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(32) as executor:
            results = list(executor.map(lambda _: worker(), range(32)))
    finally:
        stop.set()
        watcher.join()

    assert sum(errors for _, errors in results) == 0
    assert 0 < most_at_once <= 8, most_at_once
    # The server's own account: replay its connection and disconnection log.
    logged = _most_sessions_at_once(log, log_start, test_db_name)
    assert 0 < logged <= 8, (logged, log.read_text()[log_start:][-3000:])
    pool = get_engine().pool
    assert pool.checkedout() == 0
    assert pool.checkedin() == 4  # overflow connections close on return


def test_pool_timeout_raises_operational_error_naming_the_pool(pool_options):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=0.1)
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        connection.ensure_connection()
        holding.set()
        release.wait(10)
        connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        with pytest.raises(PoolTimeout) as raised:
            connection.ensure_connection()
        waited = measured(
            "exhaustion (pool_timeout=0.1): error after", time.monotonic() - started
        )
    finally:
        release.set()
        holder.join()

    assert isinstance(raised.value, OperationalError)
    assert str(raised.value) == (
        "No connection for 'default' within 0.1 s (pool_size=1, max_overflow=0)."
    )
    assert 0.1 <= waited < 2


def test_terminated_connections_cost_no_request(get, admin, test_db_name, pool_options):
    # A long threshold: only the no-round-trip check can notice the dead sockets.
    pool_options(pre_ping_threshold=3600)
    with ThreadPoolExecutor(4) as executor:
        list(executor.map(lambda _: _hold_briefly(), range(4)))
    pooled = server_pids(admin, test_db_name)
    assert len(pooled) >= 2

    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
        [test_db_name],
    )
    _wait_until(lambda: not server_pids(admin, test_db_name) & pooled)

    started = time.monotonic()
    responses = [get("/item/")]
    measured(
        "pg_terminate_backend: first request served after", time.monotonic() - started
    )
    responses += [get("/item/") for _ in range(99)]

    assert [r.status for r in responses] == [200] * 100
    assert not {r.json()["pid"] for r in responses} & pooled


def test_restart_of_the_server_costs_no_request(get, cluster, pool_options):
    pool_options(pre_ping_threshold=3600)
    before = get("/item/").json()["pid"]

    cluster.primary.restart()
    started = time.monotonic()
    responses = [get("/item/")]
    measured("primary restart: first request served after", time.monotonic() - started)
    responses += [get("/item/") for _ in range(99)]

    assert [r.status for r in responses] == [200] * 100
    assert responses[0].json()["pid"] != before


def test_view_raising_in_atomic_leaves_no_transaction_open(get):
    first = get("/raise-in-atomic/")
    after = get("/session/").json()

    assert first.status == 500
    assert after["in_transaction"] is False
    assert get("/item/").json()["found"] is False


def test_session_state_does_not_reach_the_next_borrower(get):
    fresh = get("/session/").json()
    changed = get("/change-session/").json()
    after = get("/session/").json()

    assert changed["pid"] == after["pid"] == fresh["pid"]  # the same connection
    assert after == fresh


def test_every_return_is_reset_whatever_the_borrower_ran(get, admin, test_db_name):
    get("/item/")
    connection.ensure_connection()  # collect its reset
    _reset_statements(admin)

    get("/change-session/")
    get("/item/")
    get("/item/")
    connection.ensure_connection()  # collect the last reset

    # One for each request, and one for the connection taken back above.
    assert _statements(admin, test_db_name).get("DISCARD ALL") == 4


def test_rollback_policy_leaks_session_state(get, pool_options):
    # Why "auto" is the default: a rollback alone leaves these to the next borrower.
    pool_options(reset_on_return="rollback")
    fresh = get("/session/").json()
    get("/change-session/")
    after = get("/session/").json()

    assert after["pid"] == fresh["pid"]
    assert after["search_path"] == "pg_catalog"
    assert after["temp_table"] is True
    assert after["advisory_locks"] == 1


def test_full_policy_resets_every_connection(get, admin, test_db_name, pool_options):
    pool_options(reset_on_return="full")
    get("/item/")
    _reset_statements(admin)

    for _ in range(3):
        get("/item/")

    assert _statements(admin, test_db_name).get("DISCARD ALL") == 3


def test_statement_timeout_applies_to_every_connection_and_keeps_it(get, pool_options):
    pool_options(statement_timeout=200)
    assert get("/session/").json()["statement_timeout"] == "200ms"

    failed = get("/sql/", q="SELECT pg_sleep(2)")
    after = get("/session/").json()

    assert failed.status == 500
    assert after["statement_timeout"] == "200ms"
    assert get("/item/").json()["pid"] == after["pid"]


def test_disconnect_replaces_every_older_connection(get, admin, test_db_name):
    with ThreadPoolExecutor(3) as executor:
        list(executor.map(lambda _: _hold_briefly(), range(3)))
    older = server_pids(admin, test_db_name)
    assert len(older) >= 2

    failed = get("/sql/", q="SELECT pg_terminate_backend(pg_backend_pid())")
    with ThreadPoolExecutor(3) as executor:
        pids = set(executor.map(lambda _: _hold_briefly(), range(3)))

    assert failed.status == 500
    assert not pids & older


def test_write_on_a_standby_replaces_the_pool(get, cluster, pool_options):
    # As after a failover that left the primary alias pointing at a standby.
    cluster.wait_for_replica()
    settings_dict = connections.settings["default"]
    original_port = settings_dict["PORT"]
    settings_dict["PORT"] = str(cluster.replica.port)
    pool_options()
    try:
        with ThreadPoolExecutor(2) as executor:
            older = set(executor.map(lambda _: _hold_briefly(), range(2)))

        failed = get("/sql/", q="INSERT INTO testapp_item (name) VALUES ('x')")
        with ThreadPoolExecutor(2) as executor:
            pids = set(executor.map(lambda _: _hold_briefly(), range(2)))
    finally:
        connections.close_all()
        settings_dict["PORT"] = original_port

    assert failed.status == 500
    assert len(older) == 2
    assert not pids & older


def test_read_only_transaction_of_the_application_keeps_the_pool(get):
    before = get("/item/").json()["pid"]

    failed = get(
        "/sql/",
        q="SET TRANSACTION READ ONLY; INSERT INTO testapp_item (name) VALUES ('x')",
    )

    assert failed.status == 500
    assert get("/item/").json()["pid"] == before


def test_read_only_transaction_of_the_application_is_not_a_read_only_server():
    with pytest.raises(InternalError) as failed, connection.cursor() as cursor:
        cursor.execute(
            "SET TRANSACTION READ ONLY; INSERT INTO testapp_item (name) VALUES ('x')"
        )

    assert not isinstance(failed.value, ReadOnlyServer)


@pytest.mark.django_db(transaction=True, databases=["default", "replica"])
def test_a_write_on_a_replica_alias_is_not_a_read_only_server():
    replica = connections["replica"]
    try:
        with pytest.raises(InternalError) as failed, replica.cursor() as cursor:
            cursor.execute("INSERT INTO testapp_item (name) VALUES ('x')")
    finally:
        replica.close()

    assert not isinstance(failed.value, ReadOnlyServer)


@pytest.mark.parametrize(
    ("message", "params", "expected"),
    [
        (
            'could not translate host name "db" to address: Name or service not known',
            {"host": "db"},
            'could not translate host name "***" to address: Name or service not known',
        ),
        (
            'connection to server at "10.0.0.5", port 5433 failed: FATAL:  password '
            'authentication failed for user "app"',
            {"host": "10.0.0.5", "user": "app", "password": "s3cret"},
            'FATAL:  password authentication failed for user "app"',
        ),
        (
            'connection failed: connection to server at "10.0.0.5", port 5433 failed: '
            "Connection refused\nMultiple connection attempts failed. All failures were:\n"
            "- host: 'db', port: '5433', hostaddr: '10.0.0.5': connection failed: "
            "Connection refused",
            {"host": "db", "hostaddr": "10.0.0.5"},
            "connection failed: Connection refused Multiple connection attempts failed. "
            "All failures were: connection failed: Connection refused",
        ),
        (
            'FATAL:  database "shopdb" does not exist',
            {"dbname": "shopdb", "host": "shop", "user": "db"},
            'FATAL:  database "shopdb" does not exist',
        ),
        (
            # libpq's multi-host HOST: each host is hidden.
            "failed to resolve host 'db2.internal': [Errno -2] Name or service not known",
            {"host": "db1.internal,db2.internal", "port": "5432,5433"},
            "failed to resolve host '***': [Errno -2] Name or service not known",
        ),
    ],
)
def test_health_errors_hide_hosts_and_passwords(message, params, expected):
    assert redact(message, params, hosts=True) == expected


@pytest.mark.parametrize(
    ("message", "params", "expected"),
    [
        (
            'could not translate host name "db" to address: Name or service not known',
            {"password": "s3cret"},
            'could not translate host name "db" to address: Name or service not known',
        ),
        (
            'connection to server at "10.0.0.5", port 5433 failed: FATAL:  password '
            'authentication failed for user "s3cret"',
            {"password": "s3cret"},
            'connection to server at "10.0.0.5", port 5433 failed: FATAL:  password '
            'authentication failed for user "***"',
        ),
        (
            "failed to resolve host 'postgres://app:s3cret@db/app': [Errno -2] Name or "
            "service not known",
            {},
            "failed to resolve host 'postgres://app:***@db/app': [Errno -2] Name or "
            "service not known",
        ),
    ],
)
def test_connect_errors_name_the_server_without_the_password(message, params, expected):
    assert redact(message, params) == expected


def test_connection_closed_in_atomic_is_never_reused_by_the_wrapper():
    from django.db import transaction

    with transaction.atomic():
        connection.ensure_connection()
        connection.close()
        assert connection.connection is None
        with pytest.raises(
            Exception, match="Cannot open a new connection in an atomic block"
        ):
            connection.ensure_connection()
    assert get_engine().pool.checkedout() == 0


def test_recycled_connection_is_replaced(get, pool_options):
    pool_options(pool_recycle=0.2)
    first = get("/item/").json()["pid"]
    time.sleep(0.5)

    assert get("/item/").json()["pid"] != first


def test_recycle_time_has_jitter(pool_options):
    pool_options(pool_recycle=1000)
    engine = get_engine()
    fairies = [engine.pool.connect() for _ in range(8)]
    try:
        starts = [fairy._connection_record.starttime for fairy in fairies]
    finally:
        for fairy in fairies:
            fairy.close()

    now = time.time()
    assert len(set(starts)) == 8
    assert all(now - 50 - 1 <= start <= now for start in starts)
    assert max(starts) - min(starts) > 1  # spread, not opened-together


def test_connect_failure_names_the_host_and_port_not_the_password(settings):
    from django.db.utils import ConnectionHandler

    from django_poolconf import ConnectionFailed

    secret = "s3cr3t-pa55"
    handler = ConnectionHandler(
        {
            "default": {
                "ENGINE": "django_poolconf.backends.postgresql",
                "NAME": "nowhere",
                "USER": "someone",
                "PASSWORD": secret,
                "HOST": "127.0.0.1",
                "PORT": "1",
                "POOL": {"connect_timeout": 2},
            }
        }
    )
    wrapper = handler["default"]
    try:
        with pytest.raises(ConnectionFailed) as raised:
            wrapper.ensure_connection()
    finally:
        wrapper.close()
        from django_poolconf import engines

        engines.dispose("default")

    message = str(raised.value)
    assert message.startswith(
        "Could not open a connection for 'default' (host '127.0.0.1', port 1): "
    )
    assert secret not in message
    # The driver's error is not kept: its text (and what libpq may add to it one
    # day) reaches no traceback.
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None


def test_pooled_connection_repr_names_no_server(db):
    connection.ensure_connection()
    try:
        text = repr(connection.connection) + repr(get_engine())
    finally:
        connection.close()
    settings_dict = connection.settings_dict
    assert settings_dict["HOST"] not in text
    assert str(settings_dict["PORT"]) not in text
    assert settings_dict["NAME"] not in text


def test_bad_pool_settings_raise_on_connect(pool_options):
    from django.core.exceptions import ImproperlyConfigured

    pool_options(pool_szie=3)
    with pytest.raises(
        ImproperlyConfigured,
        match=r"unknown key 'pool_szie'\. Did you mean 'pool_size'\?",
    ):
        connection.ensure_connection()


def _most_sessions_at_once(log: Any, offset: int, dbname: str) -> int:
    with open(log, "rb") as file:
        file.seek(offset)
        lines = file.read().decode(errors="replace").splitlines()
    open_pids: set[str] = set()
    most = 0
    for line in lines:
        pid = re.search(r"\[(\d+)\]", line)
        if pid is None or f"database={dbname}" not in line:
            continue
        if "connection authorized" in line:
            open_pids.add(pid.group(1))
            most = max(most, len(open_pids))
        elif "disconnection:" in line:
            open_pids.discard(pid.group(1))
    return most


def _hold_briefly() -> int:
    """Check a connection out in this thread, long enough to overlap the others."""
    try:
        connection.ensure_connection()
        time.sleep(0.2)
        return connection.connection.info.backend_pid  # type: ignore[no-any-return]
    finally:
        connections.close_all()


def _wait_until(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_test_database_can_be_cloned_and_dropped_with_idle_pooled_connections(
    get, admin, test_db_name
):
    with ThreadPoolExecutor(3) as executor:
        list(executor.map(lambda _: _hold_briefly(), range(3)))
    assert server_pids(admin, test_db_name)  # idle in the pool

    # PostgreSQL refuses to copy a database that has other sessions, and Django's
    # parallel test runner copies the test database this way.
    connection.creation.clone_test_db(suffix="clone", verbosity=0)
    clone = f"{test_db_name}_clone"
    try:
        exists = admin.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", [clone]
        ).fetchone()
        assert exists == (1,)
    finally:
        connection.creation._destroy_test_db(clone, verbosity=0)
    assert get("/item/").status == 200


def test_connection_closed_inside_atomic_is_rolled_back_for_the_next_borrower(get):
    from django.db import transaction

    from tests.testapp.models import Item

    with transaction.atomic():
        Item.objects.create(name="a")
        pid = connection.connection.info.backend_pid
        connection.close()  # returned to the pool in the middle of a transaction

    after = get("/session/").json()
    assert after["pid"] == pid
    assert after["in_transaction"] is False
    assert get("/item/").json()["found"] is False


def test_read_only_flag_set_by_a_borrower_is_not_inherited(get):
    from django.db import transaction

    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    connection.connection.read_only = True  # e.g. code that used the driver directly
    connection.close()

    with transaction.atomic():
        assert connection.connection.info.backend_pid == pid
        with connection.cursor() as cursor:
            cursor.execute("SHOW transaction_read_only")
            assert cursor.fetchone() == ("off",)
    connection.close()


def test_session_set_up_on_physical_connection_created_is_kept_and_costs_no_reset(
    get, admin, test_db_name
):
    def set_up(sender: Any, connection: Any, **kwargs: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SET application_name = 'set-up-by-receiver'")

    physical_connection_created.connect(set_up)
    try:
        get("/item/")
        _reset_statements(admin)
        for _ in range(5):
            get("/item/")
        name = get("/sql/", q="SHOW application_name").json()["row"]
    finally:
        physical_connection_created.disconnect(set_up)

    assert "DISCARD ALL" not in _statements(admin, test_db_name)
    assert name == ["set-up-by-receiver"]


def test_fully_reset_connection_is_set_up_again(get, pool_options):
    pool_options(reset_on_return="full")
    created: list[int] = []

    def count(sender: Any, connection: Any, **kwargs: Any) -> None:
        created.append(connection.connection.info.backend_pid)

    physical_connection_created.connect(count)
    try:
        first = get("/change-session/").json()["pid"]
        second = get("/item/").json()["pid"]
    finally:
        physical_connection_created.disconnect(count)

    assert first == second
    assert created == [first, first]  # once when opened, once after DISCARD ALL


def test_test_database_can_be_cloned_while_another_alias_has_idle_connections(
    admin, test_db_name
):
    # A second alias on the same database, as a mirror or a replica alias that
    # points at the primary in development: its pool holds connections too.
    connections.settings["mirror"] = dict(connections["default"].settings_dict)
    try:
        with get_engine("mirror").connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        assert server_pids(admin, test_db_name)

        connection.creation.clone_test_db(suffix="mirror", verbosity=0)
        connection.creation._destroy_test_db(f"{test_db_name}_mirror", verbosity=0)
    finally:
        engines.dispose("mirror")
        del connections["mirror"]
        del connections.settings["mirror"]


def test_iterator_cursors_closed_by_django_cost_no_extra_close(admin, test_db_name):
    from tests.testapp.models import Item

    Item.objects.create(name="a")
    connection.close()
    _reset_statements(admin)

    for _ in range(3):
        assert [item.name for item in Item.objects.iterator(chunk_size=1)] == ["a"]
        connection.close()

    closes = [
        calls
        for query, calls in _statements(admin, test_db_name).items()
        if query.startswith("CLOSE")
    ]
    assert closes == [1, 1, 1]  # Django's own, one per iterator: none on return


def test_named_cursor_left_open_is_discarded_before_the_next_borrower(get):
    cursor = connection.chunked_cursor()
    cursor.execute("SELECT 1")  # a WITH HOLD cursor, never closed
    pid = connection.connection.info.backend_pid
    connection.close()

    after = get("/sql/", q="SELECT count(*) FROM pg_cursors").json()
    assert after["pid"] == pid
    assert after["row"] == [0]


def test_psycopg_fields_the_reset_reads_match_its_properties():
    # The reset's fast path reads psycopg's private fields to save property calls:
    # this fails first if a psycopg release renames them.
    connection.ensure_connection()
    raw = connection.connection
    try:
        raw.read_only = True
        raw.deferrable = True
        for name in ("autocommit", "isolation_level", "read_only", "deferrable"):
            assert getattr(raw, f"_{name}") == getattr(raw, name), name
    finally:
        raw.read_only = None
        raw.deferrable = None
        connection.close()


def test_connection_of_a_thread_that_never_closed_it_goes_back_to_the_pool(
    caplog, monkeypatch
):
    """A thread that ends holding a connection must not shrink the pool for good."""
    import gc

    from django_poolconf.pool import orphans

    # The reaper thread would give them back too, within a second: keep it out, so
    # that what is checked here is the finalizers' and the next checkout's work.
    monkeypatch.setattr(orphans.REAPER, "all", list)
    monkeypatch.setattr(orphans, "return_orphans", lambda: None)

    def borrow_and_forget() -> None:
        connections["default"].ensure_connection()
        with connections["default"].cursor() as cursor:
            cursor.execute("BEGIN")  # left open, too: the return must roll it back
            cursor.execute("SELECT 1")

    engine = get_engine()
    workers = [threading.Thread(target=borrow_and_forget) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    del workers
    gc.collect()  # the finalizers only queue the connections: no lock, no I/O ...
    assert engine.pool.checkedout() == 3
    connection.ensure_connection()  # ... the next checkout gives them back
    connection.close()

    assert engine.pool.checkedout() == 0
    assert "was still borrowed when its Django connection" in caplog.text
    borrowed = [engine.raw_connection() for _ in range(3)]
    try:  # what came back was rolled back
        statuses = {c.driver_connection.info.transaction_status for c in borrowed}
    finally:
        for c in borrowed:
            c.close()
    assert statuses == {psycopg.pq.TransactionStatus.IDLE}


def test_sqlalchemy_checkouts_fire_pool_events_and_share_the_connections():
    from sqlalchemy import event

    engine = get_engine()
    seen: list[str] = []
    event.listen(engine, "checkout", lambda *args: seen.append("checkout"))
    event.listen(engine, "checkin", lambda *args: seen.append("checkin"))
    connection.ensure_connection()
    django_pid = connection.connection.info.backend_pid
    connection.close()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == django_pid

    # Django's borrow fires checkin only; SQLAlchemy's fires both.
    assert seen == ["checkin", "checkout", "checkin"]


def test_waiters_are_served_first_come_first_served(pool_options):
    """A thread that returns a connection and asks again queues behind the waiters."""
    pool_options(pool_size=1, max_overflow=0, pool_timeout=10)
    order: list[str] = []
    lock = threading.Lock()

    def borrow(name: str) -> None:
        try:
            connections["default"].ensure_connection()
            with lock:
                order.append(name)
            time.sleep(0.01)
        finally:
            connections["default"].close()

    connection.ensure_connection()  # the only connection
    stats = __import__("django_poolconf").pool_stats
    waiters = []
    for i in range(4):  # four threads queue up, in a known order
        waiter = threading.Thread(target=borrow, args=(f"waiter{i}",))
        waiter.start()
        waiters.append(waiter)
        deadline = time.monotonic() + 10
        while stats("default").waiting != i + 1:
            assert time.monotonic() < deadline
            time.sleep(0.002)
    connection.close()
    connection.ensure_connection()  # back at once: must not jump the line
    with lock:
        order.append("returner")
    connection.close()
    for waiter in waiters:
        waiter.join(10)

    assert order == ["waiter0", "waiter1", "waiter2", "waiter3", "returner"]


def _application_name() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('application_name')")
        return cursor.fetchone()[0]  # type: ignore[no-any-return]


def test_pooled_connections_name_the_alias_and_pid(get):
    pid = get("/item/").json()["pid"]
    shown = get("/sql/", q="SELECT current_setting('application_name')").json()

    assert shown["pid"] == pid
    assert shown["row"] == [f"django_poolconf:default:{os.getpid()}"]


def test_application_name_in_options_wins(pool_options):
    settings_dict = connections.settings["default"]
    original = settings_dict["OPTIONS"]
    settings_dict["OPTIONS"] = {**original, "application_name": "billing"}
    try:
        assert _application_name() == "billing"
    finally:
        connection.close()
        settings_dict["OPTIONS"] = original


def test_forked_child_names_its_own_pid():
    from tests.pool.test_registry import _in_child

    parent = _application_name()
    connection.close()

    # The child inherits the cached connection parameters and the pool's hooks.
    child_ok = _in_child(
        lambda: int(_application_name() == f"django_poolconf:default:{os.getpid()}")
    )

    assert parent == f"django_poolconf:default:{os.getpid()}"
    assert child_ok == 1


def test_threads_given_equal_but_distinct_adapter_maps_share_one_pool():
    """Django's ``get_adapters_template()`` is an ``lru_cache``: two threads that miss it
    at once each get an ``AdaptersMap`` of their own (the cache keeps one, and returns
    the other thread's own result). Found under gunicorn's threads by the soak test:
    the pool was replaced at each change of thread, about 16 times a second, failing
    requests with ``PoolClosed``.
    """
    from django.db.backends.postgresql.psycopg_any import get_adapters_template

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    connection.close()
    engine = get_engine("default")
    # The next thread builds a map of its own, as a thread that loses that race does.
    get_adapters_template.cache_clear()

    def other_thread() -> None:
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT 1")
        finally:
            connections["default"].close()

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    with connection.cursor() as cursor:  # this thread again, with its own map
        cursor.execute("SELECT 1")

    assert get_engine("default") is engine
