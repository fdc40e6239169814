"""Health checks, /health/db and its liveness twin, against real servers and real faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from django.db import OperationalError, connection, connections
from django.test import RequestFactory, override_settings

from django_poolconf import engines, get_engine, health, pool_stats
from django_poolconf.embedded import EmbeddedServer
from django_poolconf.health import check_health, runner
from django_poolconf.views import database_health
from tests.conftest import Response, wsgi_get
from tests.proxy import FaultProxy

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 1.0
# What the issue allows beyond TIMEOUT, whatever the servers do.
MARGIN = 1.0
TOKEN = "health-token-0123456789abcdef"


@pytest.fixture(autouse=True)
def fresh_pools_and_probes() -> Iterator[None]:
    connections.close_all()
    engines.dispose_all()
    runner._probes.clear()
    with override_settings(POOLCONF={"HEALTH": {"TIMEOUT": TIMEOUT, "CACHE": 0}}):
        yield
    runner._probes.clear()


def use_health(**options: Any) -> Any:
    return override_settings(
        POOLCONF={"HEALTH": {"TIMEOUT": TIMEOUT, "CACHE": 0, **options}}
    )


@contextlib.contextmanager
def extra_alias(alias: str, **changes: Any) -> Iterator[None]:
    """Another pooled alias, a copy of ``default`` with ``changes``, for one test."""
    base = connections.settings["default"]
    connections.settings[alias] = {**base, "TEST": dict(base["TEST"]), **changes}
    try:
        yield
    finally:
        with contextlib.suppress(AttributeError):
            del connections[alias]
        del connections.settings[alias]
        engines.dispose(alias)
        runner._probes.pop(alias, None)


@pytest.fixture
def hung_server() -> Iterator[socket.socket]:
    """A server that accepts TCP connections and never reads or answers a byte."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield listener
    listener.close()


def timed_get(path: str, **headers: str) -> tuple[Response, float]:
    started = time.monotonic()
    response = get_with_headers(path, **headers)
    return response, time.monotonic() - started


def get_with_headers(path: str, **headers: str) -> Response:
    if not headers:
        return wsgi_get(path)
    request = RequestFactory().get(path, **headers)
    return Response(*_call_wsgi(request.environ))


def _call_wsgi(environ: dict[str, Any]) -> tuple[int, bytes]:
    from django.core.handlers.wsgi import WSGIHandler

    statuses: list[str] = []
    result = WSGIHandler()(
        environ, lambda status, headers, exc=None: statuses.append(status)
    )
    try:
        body = b"".join(result)
    finally:
        result.close()
    return int(statuses[0].split()[0]), body


def client_pids(server: EmbeddedServer, dbname: str) -> set[int]:
    with psycopg.connect(server.url(), autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s "
            "AND backend_type = 'client backend'",
            [dbname],
        ).fetchall()
    return {row[0] for row in rows}


def wait_for(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def pool_status_numbers(alias: str) -> dict[str, int]:
    """The numbers SQLAlchemy's own ``pool.status()`` line gives."""
    status = get_engine(alias).pool.status()
    found = re.fullmatch(
        r"Pool size: (\d+)\s+Connections in pool: (\d+) Current Overflow: (-?\d+) "
        r"Current Checked out connections: (\d+)",
        status,
    )
    assert found, status
    size, checked_in, overflow, checked_out = map(int, found.groups())
    return {
        "pool_size": size,
        "checked_in": checked_in,
        "overflow": overflow,
        "checked_out": checked_out,
    }


# -- the healthy cluster ------------------------------------------------------------


def test_healthy_cluster_reports_every_number_as_pool_status_does(cluster):
    cluster.wait_for_replica()
    wsgi_get("/item/")  # the primary's pool holds one idle connection
    get_engine("replica")  # the replica's pool exists, empty

    response = wsgi_get("/health/db")

    assert response.status == 200
    payload = response.json()
    assert payload["status"] == "healthy"
    # The router's tests add an "analytics" group on the same servers.
    assert list(payload["databases"])[:2] == ["default", "replica"]
    for alias, role in (("default", "primary"), ("replica", "replica")):
        shown = payload["databases"][alias]
        assert shown["status"] == "healthy"
        assert shown["role"] == role
        assert shown["reason"] is None
        assert 0 < shown["latency_ms"] < TIMEOUT * 1000
        assert {k: shown[k] for k in pool_status_numbers(alias)} == pool_status_numbers(
            alias
        )
        assert shown["capacity"] == 8  # the suite's pool_size=4 + max_overflow=4
    assert payload["databases"]["default"]["checked_in"] == 1
    assert payload["databases"]["replica"]["replication_lag_s"] == 0
    assert payload["databases"]["replica"]["breaker"] == "closed"
    assert payload["databases"]["default"]["breaker"] is None  # primaries have none
    assert payload["databases"]["default"]["replication_lag_s"] is None
    # The pool's counters, with pool_stats()'s names.
    stats = pool_stats("default")
    for key in health.STATS_KEYS:
        assert payload["databases"]["default"][key] == getattr(stats, key), key
    assert payload["databases"]["default"]["checkouts"] >= 1


def test_response_is_never_cached_by_http_caches():
    request = RequestFactory().get("/health/db")

    response = database_health(request)

    assert "no-cache" in response["Cache-Control"]
    assert "no-store" in response["Cache-Control"]


def test_anonymous_callers_get_no_host_error_or_pid():
    payload = wsgi_get("/health/db").json()

    assert payload["detail"] is False
    assert payload["pid"] is None
    for shown in payload["databases"].values():
        assert shown["server"] is None
        assert shown["error"] is None


def test_numbers_of_an_alias_without_a_pool_are_those_of_a_new_pool(cluster):
    cluster.wait_for_replica()

    shown = wsgi_get("/health/db").json()["databases"]["replica"]

    assert engines.lender_of("replica") is None  # the check made none
    assert (shown["pool_size"], shown["checked_in"], shown["checked_out"]) == (4, 0, 0)
    assert shown["overflow"] == -4


# -- outages ------------------------------------------------------------------------


def test_stopped_replica_is_degraded_with_its_reason(cluster):
    cluster.replica.stop(mode="immediate")
    try:
        response, took = timed_get("/health/db")
    finally:
        cluster.replica.start()

    assert response.status == 200
    payload = response.json()
    assert payload["status"] == "degraded"
    assert payload["databases"]["default"]["status"] == "healthy"
    assert payload["databases"]["replica"]["status"] == "unhealthy"
    assert payload["databases"]["replica"]["reason"] == "unreachable"
    assert took < TIMEOUT + MARGIN


def test_stopped_primary_answers_503_within_the_timeout(cluster):
    wsgi_get("/item/")  # with an idle pooled connection, to a server about to stop
    cluster.primary.stop(mode="immediate")
    try:
        response, took = timed_get("/health/db")
    finally:
        cluster.primary.start()

    assert response.status == 503
    payload = response.json()
    assert payload["status"] == "unhealthy"
    assert payload["databases"]["default"]["status"] == "unhealthy"
    assert payload["databases"]["default"]["reason"] in {"unreachable", "timeout"}
    assert took < TIMEOUT + MARGIN


def test_hung_server_answers_503_within_the_timeout(hung_server):
    port = hung_server.getsockname()[1]
    with extra_alias("hung", HOST="127.0.0.1", PORT=str(port)):
        response, took = timed_get("/health/db")

    assert response.status == 503
    payload = response.json()
    assert payload["databases"]["hung"]["reason"] == "timeout"
    assert payload["databases"]["hung"]["role"] == "primary"
    assert payload["databases"]["default"]["status"] == "healthy"
    assert took < TIMEOUT + MARGIN


def test_requests_during_a_hung_probe_share_it(hung_server):
    port = hung_server.getsockname()[1]
    with extra_alias("hung", HOST="127.0.0.1", PORT=str(port)):
        with ThreadPoolExecutor(10) as executor:
            responses = list(executor.map(lambda _: timed_get("/health/db"), range(10)))

        hung_server.setblocking(False)
        attempts = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                hung_server.accept()[0].close()
                attempts += 1

    assert [r.status for r, _ in responses] == [503] * 10
    assert max(took for _, took in responses) < TIMEOUT + MARGIN
    assert attempts == 1  # one probe, not one per request


def test_saturated_pool_is_reported_within_the_timeout_not_pool_timeout(pool_options):
    pool_options(pool_size=1, max_overflow=0, pool_timeout=30)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        connection.ensure_connection()
        holding.set()
        release.wait(30)
        connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        response, took = timed_get("/health/db")
    finally:
        release.set()
        holder.join()

    assert response.status == 200
    shown = response.json()["databases"]["default"]
    assert (shown["status"], shown["reason"]) == ("degraded", "pool_saturated")
    assert (shown["checked_out"], shown["capacity"]) == (1, 1)
    assert took < TIMEOUT + MARGIN
    assert get_engine().pool.checkedout() == 0


def test_primary_alias_on_a_standby_is_a_read_only_primary(cluster):
    with extra_alias("standby", PORT=str(cluster.replica.port)):
        cluster.wait_for_replica()
        response = wsgi_get("/health/db")

    assert response.status == 503
    shown = response.json()["databases"]["standby"]
    assert (shown["status"], shown["reason"]) == ("unhealthy", "read_only_primary")


def test_replica_alias_on_a_server_not_in_recovery_is_a_promoted_replica():
    # As after a failover promoted the replica: the server takes writes now.
    with extra_alias("promoted", REPLICA_OF="default"):
        response = wsgi_get("/health/db")

    assert response.status == 200
    shown = response.json()["databases"]["promoted"]
    assert (shown["status"], shown["reason"]) == ("degraded", "replica_promoted")
    assert shown["replication_lag_s"] is None


def test_replica_behind_max_replica_lag_is_lagging(cluster, test_db_name):
    cluster.wait_for_replica()
    replica = psycopg.connect(cluster.replica.url(), autocommit=True)
    replica.execute("SELECT pg_wal_replay_pause()")
    try:
        with psycopg.connect(
            cluster.primary.url(test_db_name), autocommit=True
        ) as primary:
            primary.execute("INSERT INTO testapp_item (name) VALUES ('unreplayed')")
        time.sleep(0.6)
        with use_health(MAX_REPLICA_LAG=0.5):
            lagging = wsgi_get("/health/db")
        with use_health():  # no bound: reported, not judged
            reported = wsgi_get("/health/db")
    finally:
        replica.execute("SELECT pg_wal_replay_resume()")
        replica.close()

    assert lagging.status == 200
    assert lagging.json()["status"] == "degraded"
    shown = lagging.json()["databases"]["replica"]
    assert (shown["status"], shown["reason"]) == ("degraded", "replica_lagging")
    assert shown["replication_lag_s"] > 0.5
    assert reported.json()["databases"]["replica"]["status"] == "healthy"
    assert reported.json()["databases"]["replica"]["replication_lag_s"] > 0.5


# -- no leaks, no stampede -----------------------------------------------------------


def test_thousand_requests_leave_no_connection_checked_out_or_open(
    cluster, test_db_name
):
    cluster.wait_for_replica()
    wsgi_get("/item/")  # the primary's pool: one idle connection, probed through
    primary_before = client_pids(cluster.primary, test_db_name)
    replica_before = client_pids(cluster.replica, test_db_name)

    def requests(count: int) -> list[tuple[int, str]]:
        try:
            responses = [wsgi_get("/health/db") for _ in range(count)]
        finally:
            connections.close_all()
        return [(r.status, r.json()["status"]) for r in responses]

    with ThreadPoolExecutor(8) as executor:
        results = [s for batch in executor.map(requests, [125] * 8) for s in batch]

    assert results == [(200, "healthy")] * 1000
    assert get_engine("default").pool.checkedout() == 0
    assert get_engine("default").pool.checkedin() == 1
    # The replica has no pool: every probe opened a connection of its own and closed it.
    assert wait_for(
        lambda: client_pids(cluster.replica, test_db_name) == replica_before
    )
    assert wait_for(
        lambda: client_pids(cluster.primary, test_db_name) == primary_before
    )


def test_results_are_reused_for_cache_seconds(admin, test_db_name):
    wsgi_get("/item/")
    admin.execute("SELECT pg_stat_statements_reset()")

    def probes() -> int:
        row = admin.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = %s AND query LIKE %s",
            [test_db_name, "%pg_is_in_recovery()%"],
        ).fetchone()
        return int(row[0])

    with use_health(CACHE=60):
        cached = [wsgi_get("/health/db").json() for _ in range(5)]
    after_cached = probes()
    with use_health(CACHE=0):
        for _ in range(5):
            wsgi_get("/health/db")

    # One probe per alias on the primary (default, and the router tests' analytics).
    per_round = len([a for a in health.pooled_aliases() if "replica" not in a])
    assert after_cached == per_round
    assert probes() == 6 * per_round
    assert {r["status"] for r in cached} == {"healthy"}


# -- secrets and detail ---------------------------------------------------------------


SECRET = "pw-sentinel-7c1d"


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        # libpq: 'role "user-sentinel-5e2a" does not exist' names the user.
        ({"USER": "user-sentinel-5e2a"}, ["user-sentinel-5e2a", "127.0.0.1"]),
        # 'database "db-pw-sentinel-7c1d" does not exist' carries the password.
        ({"NAME": f"db-{SECRET}"}, [SECRET, "127.0.0.1"]),
        # A refused connection names the address the host name resolved to.
        ({"HOST": "localhost", "PORT": "1"}, ["127.0.0.1", "port 1"]),
    ],
)
def test_no_password_user_or_host_in_any_output(changes, words):
    from io import StringIO

    from django.core.management import call_command

    with (
        extra_alias("leaky", PASSWORD=SECRET, **changes),
        use_health(DETAIL="token", TOKEN=TOKEN),
    ):
        params = connections["leaky"].get_connection_params()
        with pytest.raises(psycopg.OperationalError) as raw:
            psycopg.connect(
                **{
                    k: v
                    for k, v in params.items()
                    if k not in {"context", "cursor_factory"}
                }
            )
        anonymous = wsgi_get("/health/db")
        detailed = get_with_headers("/health/db", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        table, as_json = StringIO(), StringIO()
        call_command("poolstatus", "--database", "leaky", stdout=table)
        call_command("poolstatus", "--database", "leaky", "--json", stdout=as_json)

    # What the driver says... (psycopg before 3.1.15 or so cut libpq's message at its
    # first colon, and with it the address: 'connection failed: Connection refused'.)
    names_address = hasattr(psycopg.pq.misc, "strip_severity")
    for word in words:
        if names_address or word not in {"127.0.0.1", "port 1"}:
            assert word in str(raw.value)
    error = detailed.json()["databases"]["leaky"]["error"]
    assert "does not exist" in error or "refused" in error  # ...we pass on...
    for word in words:  # ...without the password, the user or the host
        assert word not in error
        assert word not in anonymous.body.decode()
        assert word not in json.loads(as_json.getvalue())["databases"]["leaky"]["error"]
    for output in (detailed.body.decode(), table.getvalue(), as_json.getvalue()):
        assert SECRET not in output
    assert anonymous.json()["databases"]["leaky"]["reason"] == "unreachable"
    assert anonymous.json()["databases"]["leaky"]["error"] is None


def test_bearer_token_shows_detail():
    with use_health(DETAIL="token", TOKEN=TOKEN):
        good = get_with_headers("/health/db", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        wrong = get_with_headers("/health/db", HTTP_AUTHORIZATION="Bearer nope")
        anonymous = wsgi_get("/health/db")

    assert good.json()["detail"] is True
    assert good.json()["pid"] > 0
    server = good.json()["databases"]["default"]["server"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+/test_app", server), server
    for hidden in (wrong, anonymous):
        assert hidden.json()["detail"] is False
        assert hidden.json()["databases"]["default"]["server"] is None


@pytest.mark.parametrize(
    ("user", "shown"),
    [
        (types.SimpleNamespace(is_active=True, is_staff=True), True),
        (types.SimpleNamespace(is_active=True, is_staff=False), False),
        (types.SimpleNamespace(is_active=False, is_staff=True), False),
        (None, False),  # no AuthenticationMiddleware
    ],
)
def test_staff_detail_is_for_active_staff_users(user, shown):
    request = RequestFactory().get("/health/db")
    if user is not None:
        request.user = user
    with use_health(DETAIL="staff"):
        payload = json.loads(database_health(request).content)

    assert payload["detail"] is shown


def test_detail_none_ignores_a_token():
    with use_health(DETAIL="none", TOKEN=TOKEN):
        response = get_with_headers("/health/db", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.json()["detail"] is False


# -- liveness, ASGI, the breaker -------------------------------------------------------


def test_liveness_answers_without_touching_a_database(hung_server):
    port = hung_server.getsockname()[1]
    with extra_alias("hung", HOST="127.0.0.1", PORT=str(port)):
        response, took = timed_get("/health/db/live")
        hung_server.setblocking(False)
        with pytest.raises(BlockingIOError):
            hung_server.accept()  # nobody tried to connect

    assert response.status == 200
    assert response.json() == {"status": "alive"}
    assert took < TIMEOUT / 2


def asgi_get(path: str) -> tuple[int, dict[str, str], bytes]:
    from django.core.handlers.asgi import ASGIHandler

    async def run() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        received = False
        never = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal received
            if received:  # Django listens for the disconnect until it answers
                await never.wait()
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver")],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        await ASGIHandler()(scope, receive, send)
        return sent

    sent = asyncio.run(run())
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    body = b"".join(
        m.get("body", b"") for m in sent if m["type"] == "http.response.body"
    )
    return start["status"], headers, body


def test_view_works_under_asgi(cluster):
    cluster.wait_for_replica()

    status, headers, body = asgi_get("/health/db")

    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["status"] == "healthy"


def test_hung_server_under_asgi_answers_within_the_timeout(hung_server):
    port = hung_server.getsockname()[1]
    with extra_alias("hung", HOST="127.0.0.1", PORT=str(port)):
        started = time.monotonic()
        status, _, body = asgi_get("/health/db")
        took = time.monotonic() - started

    assert status == 503
    assert json.loads(body)["databases"]["hung"]["reason"] == "timeout"
    assert took < TIMEOUT + MARGIN


def test_breaker_state_comes_from_the_routers_replica_tracking(cluster):
    from django_poolconf import replicas

    cluster.wait_for_replica()
    try:
        # What the router records when a replica's connection fails.
        with override_settings(
            POOLCONF={
                "HEALTH": {"TIMEOUT": TIMEOUT, "CACHE": 0},
                "ROUTER": {"BACKOFF": 60, "MAX_BACKOFF": 60},
            }
        ):
            replicas.record_failure("replica", OperationalError("connection lost"))
            report = check_health()
    finally:
        replicas.reset()

    assert report["replica"].breaker == "open"
    assert report["default"].breaker is None  # primaries have none


# -- check_health() itself ------------------------------------------------------------


def test_check_health_limits_to_the_aliases_given():
    report = check_health(["replica"])

    assert [h.alias for h in report.databases] == ["replica"]


def test_check_health_refuses_an_alias_that_is_not_pooled():
    from django.core.exceptions import ImproperlyConfigured

    message = (
        "DATABASES['plain'] does not use a django-poolconf backend, so it has no pool "
        "to check."
    )
    with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
        check_health(["plain"])


def test_misconfigured_alias_is_unhealthy_not_an_error():
    with extra_alias("broken", POOL={"pool_size": -1}):
        report = check_health(["broken", "default"])

    assert (report["broken"].status, report["broken"].reason) == (
        "unhealthy",
        "misconfigured",
    )
    assert "pool_size" in (report["broken"].error or "")
    assert report.status == "unhealthy"
    assert report["default"].status == "healthy"


def test_probe_threads_end_after_the_check():
    wsgi_get("/item/")
    before = {t.name for t in threading.enumerate()}

    check_health(max_age=0)

    assert wait_for(
        lambda: not {t.name for t in threading.enumerate()} - before, timeout=2
    )


def test_pooled_connection_that_stalls_is_timed_out_and_closed_not_pooled():
    primary = connections.settings["default"]
    proxy = FaultProxy(primary["HOST"], int(primary["PORT"]))
    # No ping when borrowed, and no reset in flight: a probe leaves a connection whose
    # reset has not come back for the next checkout, so the stall must hit its query.
    pool = {**primary["POOL"], "pre_ping_threshold": 60, "reset_on_return": "rollback"}
    try:
        with extra_alias("stalled", PORT=str(proxy.port), POOL=pool):
            with get_engine("stalled").connect() as conn:  # one idle pooled connection
                before = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            proxy.stall()
            started = time.monotonic()
            report = check_health(["stalled"])
            took = time.monotonic() - started
            probe = runner._probes["stalled"].future.result(timeout=5)
            proxy.restore()
            with get_engine("stalled").connect() as conn:
                after = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            checked_out = get_engine("stalled").pool.checkedout()
    finally:
        proxy.restore()
        proxy.close()

    assert (report["stalled"].status, report["stalled"].reason) == (
        "unhealthy",
        "timeout",
    )
    assert report["stalled"].checked_in == 1  # the probe went through the pool
    assert took < TIMEOUT + MARGIN
    assert probe.failure == "timeout"
    assert after != before  # closed, not given to the next borrower
    assert checked_out == 0


def test_forked_child_checks_health_while_a_parent_thread_held_the_probe_lock():
    import os

    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with runner._lock:
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                code = 0 if check_health(["default"]).status == "healthy" else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 10
        while (done := os.waitpid(child, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(child, 9)
                os.waitpid(child, 0)
                pytest.fail("the child hung on the parent's probe lock")
            time.sleep(0.01)
    finally:
        release.set()
        holder.join()
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_a_replica_whose_lag_is_unknown_is_lagging_as_the_router_judges_it():
    # The router counts an unknown lag (NULL: a restarted standby that has replayed
    # no transaction yet) as too far behind; /health/db must say the same.
    from concurrent.futures import Future

    from django_poolconf.backends.probes import ProbeResult
    from django_poolconf.conf.health import HealthSettings
    from django_poolconf.health import runner

    future: Future[ProbeResult] = Future()
    future.set_result(
        ProbeResult(
            finished_at=time.monotonic(),
            in_recovery=True,
            read_only=True,
            replication_lag_s=None,
        )
    )
    check = runner._Check(
        alias="replica",
        role="replica",
        numbers=(4, 1, 0, 0),
        capacity=8,
        future=future,
    )

    verdict = runner._verdict(check, HealthSettings(max_replica_lag=5.0))

    assert verdict.reason == "replica_lagging"
