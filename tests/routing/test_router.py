"""The read/write router against the real primary and streaming replica.

Every test proves which server answered a read by asking it: ``pg_is_in_recovery()``
is true on the replica only.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from http.cookies import SimpleCookie
from typing import Any

import psycopg
import pytest
from asgiref.sync import async_to_sync
from django.contrib.contenttypes.models import ContentType
from django.core import signing
from django.core.handlers.wsgi import WSGIHandler
from django.db import OperationalError, connections, transaction
from django.http import HttpResponse
from django.test import AsyncClient, RequestFactory, override_settings

from django_poolconf import engines, get_engine, replicas
from django_poolconf.middleware import SIGNING_SALT, ReadWriteMiddleware
from django_poolconf.routers import (
    ReadWriteRouter,
    note_write,
    routing_scope,
    use_primary,
    use_replica,
)
from django_poolconf.routing import router, scope
from tests.conftest import RESET_STATEMENTS
from tests.measure import measured
from tests.routing_urls import server
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])

ROUTER = "django_poolconf.routers.ReadWriteRouter"
MIDDLEWARE = "django_poolconf.middleware.ReadWriteMiddleware"
# Short enough for tests; the defaults are 1 s, 30 s and 1 s.
FAST = {"BACKOFF": 0.2, "MAX_BACKOFF": 1.0, "CHECK_INTERVAL": 0.1}
DEADLINE_S = 30.0


class Reply:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[-1] if values else None

    def json(self) -> Any:
        import json

        return json.loads(self.body)


class Browser:
    """Whole WSGI request cycles, as a server runs them, with a cookie jar.

    Unlike Django's test client, the connections go back to their pools at the end
    of each request, as in production.
    """

    def __init__(self) -> None:
        self.handler = WSGIHandler()
        self.cookies: dict[str, str] = {}

    def get(
        self, path: str, *, headers: dict[str, str] | None = None, **query: str
    ) -> Reply:
        environ = RequestFactory().get(path, query, headers=headers).environ
        if self.cookies:
            environ["HTTP_COOKIE"] = "; ".join(
                f"{k}={v}" for k, v in self.cookies.items()
            )
        statuses: list[str] = []
        response_headers: list[tuple[str, str]] = []

        def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
            statuses.append(status)
            response_headers.extend(headers)

        result = self.handler(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            result.close()  # sends request_finished: connections go back to the pools
        for name, value in response_headers:
            if name.lower() == "set-cookie":
                cookie: SimpleCookie = SimpleCookie()
                cookie.load(value)
                for key, morsel in cookie.items():
                    self.cookies[key] = morsel.value
        return Reply(int(statuses[0].split()[0]), response_headers, body)


@pytest.fixture(autouse=True)
def fresh_state():
    connections.close_all()
    engines.dispose_all()
    replicas.reset()
    router._config = None
    yield
    replicas.reset()
    connections.close_all()
    router._config = None


@pytest.fixture
def routing() -> Iterator[Callable[..., Browser]]:
    """Install the router and its middleware with ``POOLCONF["ROUTER"]`` options."""
    with contextlib.ExitStack() as stack:

        def use(**options: Any) -> Browser:
            poolconf = {"ROUTER": {**FAST, **options}}
            stack.enter_context(
                override_settings(
                    POOLCONF=poolconf,
                    DATABASE_ROUTERS=[ROUTER],
                    MIDDLEWARE=[MIDDLEWARE],
                )
            )
            return Browser()

        yield use


def _admin(alias: str, dbname: str | None = None) -> psycopg.Connection[Any]:
    """A plain connection to the alias's server, outside every pool."""
    settings_dict = connections[alias].settings_dict
    return psycopg.connect(
        host=settings_dict["HOST"],
        port=settings_dict["PORT"],
        user=settings_dict["USER"],
        dbname=dbname or settings_dict["NAME"],
        autocommit=True,
        connect_timeout=5,
    )


def _wait_until(condition: Callable[[], bool], what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > DEADLINE_S:
            raise AssertionError(f"{what}: not within {DEADLINE_S} s")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def caught_up() -> Callable[[], None]:
    """Wait until the replica has replayed everything committed on the primary."""

    def wait() -> None:
        with _admin("default", "postgres") as primary:
            primary.execute("SET synchronous_commit = on")
            primary.execute("SELECT pg_logical_emit_message(true, 'test', '')")
            (target,) = primary.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        with _admin("replica", "postgres") as replica:
            _wait_until(
                lambda: replica.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s", [target]
                ).fetchone()[0],
                "the replica did not catch up",
            )

    wait()
    return wait


class Replay:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection

    def resume(self) -> None:
        self.connection.execute("SELECT pg_wal_replay_resume()")

    def has(self, name: str) -> bool:
        """Whether the replica has replayed the insert of item ``name``."""
        with _admin("replica") as replica:
            return replica.execute(
                "SELECT EXISTS (SELECT FROM testapp_item WHERE name = %s)", [name]
            ).fetchone()[0]


@pytest.fixture
def paused_replay(caught_up) -> Iterator[Replay]:
    """The replica, with its replay paused; resumed after the test, whatever happens."""
    with _admin("replica", "postgres") as replica:
        replica.execute("SELECT pg_wal_replay_pause()")
        try:
            yield Replay(replica)
        finally:
            replica.execute("SELECT pg_wal_replay_resume()")


def _servers(replies: list[Reply]) -> list[bool]:
    return [reply.json()["server"]["in_recovery"] for reply in replies]


# -- which server a request reads from -------------------------------------------------


def test_read_in_a_fresh_request_goes_to_the_replica(routing, caught_up):
    browser = routing()

    reply = browser.get("/router/read/").json()

    assert reply["server"]["in_recovery"] is True
    assert reply["server"]["port"] == int(connections["replica"].settings_dict["PORT"])
    assert reply["server"]["alias"] == "replica"


def test_read_after_write_in_a_request_reads_its_write_on_the_primary(
    routing, paused_replay
):
    browser = routing()

    replies = [
        browser.get("/router/write-then-read/", name=f"item {n}").json()
        for n in range(20)
    ]

    assert [r["found"] for r in replies] == [True] * 20
    assert [r["server"]["in_recovery"] for r in replies] == [False] * 20
    # Replay really was paused: the replica would have read stale data.
    assert not paused_replay.has("item 0")
    fresh = browser.get("/router/read/", name="item 0").json()
    assert fresh["server"]["in_recovery"] is True
    assert fresh["found"] is False


def test_raw_sql_write_pins_the_request_to_the_primary(routing, paused_replay):
    browser = routing()

    reply = browser.get("/router/raw-write-then-read/", name="raw").json()

    assert reply == {"found": True, "server": reply["server"]}
    assert reply["server"]["in_recovery"] is False


def test_read_inside_atomic_goes_to_the_primary(routing, caught_up):
    browser = routing()

    reply = browser.get("/router/read-in-atomic/").json()

    assert reply["inside"]["in_recovery"] is False
    assert reply["after"]["in_recovery"] is True


def test_reads_of_one_request_stay_on_one_server(routing, caught_up):
    browser = routing()

    replies = [browser.get("/router/read/").json() for _ in range(10)]

    assert all(r["server"] == r["again"] for r in replies)


def test_state_is_reset_when_the_view_raises(routing, caught_up):
    browser = routing()

    failed = browser.get("/router/write-then-raise/", name="x")
    after = browser.get("/router/read/").json()

    assert failed.status == 500
    assert after["server"]["in_recovery"] is True


def test_middleware_restores_the_context_when_the_view_raises(routing):
    routing()
    seen = []

    def view(request):
        seen.append(scope.SCOPE.get())
        raise RuntimeError("boom")

    outer = scope.Scope()
    token = scope.SCOPE.set(outer)
    try:
        with pytest.raises(RuntimeError):
            ReadWriteMiddleware(view)(RequestFactory().get("/"))
        assert scope.SCOPE.get() is outer
    finally:
        scope.SCOPE.reset(token)
    assert seen[0] is not outer


def test_request_started_resets_the_state_without_the_middleware(caught_up):
    with override_settings(DATABASE_ROUTERS=[ROUTER], MIDDLEWARE=[]):
        browser = Browser()
        browser.get("/router/write/", name="no middleware")
        after = browser.get("/router/read/").json()

    assert after["server"]["in_recovery"] is True


# -- use_primary(), use_replica(), routing_scope(), note_write() ------------------------


def test_use_primary_as_context_manager_and_decorator(routing, caught_up):
    browser = routing()

    with use_primary():
        inside = server()
    decorated = browser.get("/router/primary-by-decorator/").json()

    assert inside["in_recovery"] is False
    assert decorated["server"]["in_recovery"] is False
    with routing_scope():
        assert server()["in_recovery"] is True


def test_use_replica_reads_the_replica_after_a_write(routing, caught_up):
    browser = routing()

    reply = browser.get("/router/replica-after-write/", name="forced").json()

    assert reply["forced"]["in_recovery"] is True
    assert reply["after"]["in_recovery"] is False


def test_use_replica_inside_use_primary_wins(routing, caught_up):
    routing()

    with routing_scope(), use_primary(), use_replica():
        assert server()["in_recovery"] is True
    with routing_scope(), use_replica(), use_primary():
        assert server()["in_recovery"] is False


def test_routing_scope_starts_fresh_and_restores_the_outer_state(routing, caught_up):
    routing()

    with routing_scope():
        Item.objects.create(name="outer")
        with routing_scope():
            inner = server()
        outer = server()

    assert inner["in_recovery"] is True
    assert outer["in_recovery"] is False


def test_routing_scope_decorates_a_task(routing, caught_up):
    routing()

    @routing_scope
    def task(name: str) -> dict[str, Any]:
        before = server()
        Item.objects.create(name=name)
        return {"before": before, "after": server()}

    first, second = task("one"), task("two")

    assert [first["before"]["in_recovery"], first["after"]["in_recovery"]] == [
        True,
        False,
    ]
    assert second["before"]["in_recovery"] is True


def test_note_write_pins_reads_after_a_write_the_router_did_not_see(routing, caught_up):
    routing()

    with routing_scope():
        with get_engine("default").begin() as conn:
            conn.exec_driver_sql("INSERT INTO testapp_item (name) VALUES ('sa')")
        note_write("default")
        reply = server()

    assert reply["in_recovery"] is False


def test_outside_any_request_a_write_pins_the_rest_of_the_context(routing, caught_up):
    routing()

    def thread_body(results: list[bool]) -> None:
        try:
            results.append(server()["in_recovery"])
            Item.objects.create(name="thread")
            results.append(server()["in_recovery"])
            results.append(server()["in_recovery"])
        finally:
            connections.close_all()

    results: list[bool] = []
    thread = threading.Thread(target=thread_body, args=(results,))
    thread.start()
    thread.join()

    assert results == [True, False, False]


# -- pins across requests -----------------------------------------------------------------


def test_pin_sends_the_next_request_to_the_primary_until_it_expires(routing, caught_up):
    browser = routing(PIN_SECONDS=1)

    wrote = browser.get("/router/write/", name="pinned")
    pinned = browser.get("/router/read/").json()
    time.sleep(1.2)
    expired = browser.get("/router/read/").json()

    assert wrote.header("Set-Cookie") is not None
    assert wrote.header("X-Poolconf-Pin") == browser.cookies["poolconf_pin"]
    assert pinned["server"]["in_recovery"] is False
    assert expired["server"]["in_recovery"] is True


def test_pin_header_pins_an_api_client_without_cookies(routing, caught_up):
    browser = routing(PIN_SECONDS=30, HEADER_NAME="X-Pin")
    token = browser.get("/router/write/", name="api").header("X-Pin")
    browser.cookies.clear()

    pinned = browser.get("/router/read/", headers={"X-Pin": token}).json()
    forged = browser.get("/router/read/", headers={"X-Pin": token[:-2] + "xx"}).json()
    unpinned = browser.get("/router/read/").json()

    assert pinned["server"]["in_recovery"] is False
    assert forged["server"]["in_recovery"] is True
    assert unpinned["server"]["in_recovery"] is True


def test_no_pin_without_a_write(routing, caught_up):
    browser = routing(PIN_SECONDS=30)

    reply = browser.get("/router/read/")

    assert reply.header("Set-Cookie") is None
    assert reply.header("X-Poolconf-Pin") is None


def test_causal_read_goes_to_the_primary_until_the_replica_replays_the_write(
    routing, paused_replay
):
    browser = routing(PIN_SECONDS=60, CAUSAL=True)
    browser.get("/router/write/", name="causal")

    pinned = [browser.get("/router/read/", name="causal").json() for _ in range(5)]
    paused_replay.resume()

    def back_on_replica() -> bool:
        reply = browser.get("/router/read/", name="causal").json()
        assert reply["found"] is True  # never a stale read on the way
        return reply["server"]["in_recovery"]

    _wait_until(back_on_replica, "reads did not return to the replica")
    assert [(r["found"], r["server"]["in_recovery"]) for r in pinned] == [
        (True, False)
    ] * 5
    assert Browser().get("/router/read/", name="causal").json()["server"]["in_recovery"]


def test_causal_pin_of_a_caught_up_replica_reads_the_replica(routing, caught_up):
    browser = routing(PIN_SECONDS=60, CAUSAL=True)
    browser.get("/router/write/", name="caught up")
    caught_up()

    reply = {}

    def on_replica() -> bool:
        nonlocal reply
        reply = browser.get("/router/read/", name="caught up").json()
        return reply["server"]["in_recovery"]

    _wait_until(on_replica, "the replica was never used")
    assert reply["found"] is True


# -- a replica that is down or behind -----------------------------------------------------


def test_stopped_replica_costs_no_read_and_reads_return_after_restart(
    routing, cluster, caught_up
):
    browser = routing(BACKOFF=0.2, MAX_BACKOFF=1.0)
    assert browser.get("/router/read/").json()["server"]["in_recovery"] is True

    cluster.replica.stop()
    try:
        during = [browser.get("/router/read/") for _ in range(30)]
        time.sleep(1.5)  # a few failed probes: the back-off reaches its maximum
        during += [browser.get("/router/read/") for _ in range(10)]
        state = replicas.replica_states()["replica"]
    finally:
        cluster.replica.start()
    back_after = _wait_until(
        lambda: browser.get("/router/read/").json()["server"]["in_recovery"],
        "reads did not return to the replica",
    )
    measured("replica restart: reads back on the replica after", back_after)

    assert [r.status for r in during] == [200] * 40
    assert _servers(during) == [False] * 40
    assert state.breaker in {"open", "half_open"}
    assert state.failures >= 2
    assert state.last_error.startswith("Could not open a connection for 'replica'")
    # Within the largest back-off (1 s plus its jitter), with room for a slow machine.
    assert back_after < 1.1 + 5
    assert replicas.replica_states()["replica"].breaker == "closed"


def test_replica_lost_during_a_request_sends_its_next_reads_to_the_primary(
    routing, caught_up
):
    routing()
    with routing_scope():
        assert server()["in_recovery"] is True
        with (
            connections["replica"].cursor() as cursor,
            pytest.raises(OperationalError),
        ):
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        after = server()

    assert after["in_recovery"] is False
    assert replicas.replica_states()["replica"].breaker != "closed"


def test_lagging_replica_is_skipped_until_it_catches_up(routing, paused_replay):
    browser = routing(MAX_REPLICA_LAG=0.5)
    _wait_until(
        lambda: browser.get("/router/read/").json()["server"]["in_recovery"],
        "the replica was never used",
    )
    with _admin("default") as primary:
        primary.execute("INSERT INTO testapp_item (name) VALUES ('lag')")

    _wait_until(
        lambda: not browser.get("/router/read/").json()["server"]["in_recovery"],
        "reads did not leave the lagging replica",
    )
    lagging = replicas.replica_states()["replica"]
    paused_replay.resume()
    _wait_until(
        lambda: browser.get("/router/read/").json()["server"]["in_recovery"],
        "reads did not return to the replica",
    )

    assert lagging.breaker == "closed"
    assert lagging.lag_s > 0.5


def test_lag_is_measured_at_most_once_per_interval(routing, caught_up):
    browser = routing(MAX_REPLICA_LAG=30, CHECK_INTERVAL=0.5)
    with _admin("replica", "postgres") as replica:
        replica.execute("SELECT pg_stat_statements_reset()")
        started = time.monotonic()
        replies = [browser.get("/router/read/") for _ in range(100)]
        elapsed = time.monotonic() - started
        time.sleep(0.6)
        (measurements,) = replica.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
            "WHERE query LIKE '%pg_last_wal_replay_lsn%'"
        ).fetchone()

    assert all(r.status == 200 for r in replies)
    assert 1 <= measurements <= elapsed / 0.5 + 2


def test_choosing_the_replica_costs_no_round_trip(routing, caught_up):
    browser = routing()
    browser.get("/router/read/")  # opens the replica's connection
    with _admin("replica", "postgres") as replica:
        replica.execute("SELECT pg_stat_statements_reset()")
        for _ in range(20):
            browser.get("/router/read/")
        rows = replica.execute(
            "SELECT query, calls FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s",
            [connections["replica"].settings_dict["NAME"]],
        ).fetchall()

    # The view's two reads and the reset each return sends (not waited for), and
    # nothing else: no ping, no probe, no measurement.
    reads = [calls for query, calls in rows if query not in RESET_STATEMENTS]
    assert reads == [40], rows


def test_replica_states_show_the_measured_lag_and_position(routing, caught_up):
    routing(MAX_REPLICA_LAG=5)
    with routing_scope():
        server()

    _wait_until(
        lambda: replicas.replica_states()["replica"].measured_s_ago is not None,
        "the replica was not measured",
    )
    state = replicas.replica_states()["replica"]

    assert state.primary == "default"
    assert state.in_recovery is True
    assert state.breaker == "closed"
    assert 0 <= state.lag_s <= 5
    assert "/" in state.replayed_lsn


# -- several replicas, several primaries ----------------------------------------------------


ANALYTICS = ["analytics", "analytics_replica", "analytics_replica2"]


def _content_types_db() -> str:
    return ContentType.objects.all().db


@pytest.mark.django_db(transaction=True, databases=["default", "replica", *ANALYTICS])
def test_round_robin_spreads_requests_over_replicas(routing, caught_up):
    routing(APPS={"contenttypes": "analytics"})

    requests = []
    for _ in range(6):
        with routing_scope():
            requests.append([_content_types_db() for _ in range(3)])

    aliases = [request[0] for request in requests]
    assert sorted(set(aliases)) == ["analytics_replica", "analytics_replica2"]
    assert all(aliases[i] != aliases[i + 1] for i in range(5))
    assert all(len(set(request)) == 1 for request in requests)


@pytest.mark.django_db(transaction=True, databases=["default", "replica", *ANALYTICS])
def test_least_busy_picks_the_replica_with_fewer_connections_out(routing, caught_up):
    routing(APPS={"contenttypes": "analytics"}, BALANCE="least_busy")

    with get_engine("analytics_replica").connect():
        chosen = []
        for _ in range(4):
            with routing_scope():
                chosen.append(_content_types_db())
            connections["analytics_replica2"].close()

    assert chosen == ["analytics_replica2"] * 4


@pytest.mark.django_db(transaction=True, databases=["default", "replica", *ANALYTICS])
def test_primaries_are_routed_apart(routing, caught_up):
    routing(APPS={"contenttypes": "analytics"})
    router = ReadWriteRouter()

    with routing_scope():
        reads = (router.db_for_read(ContentType), router.db_for_read(Item))
        writes = (router.db_for_write(ContentType), router.db_for_write(Item))
        after = (router.db_for_read(ContentType), router.db_for_read(Item))
    with routing_scope():
        router.db_for_write(ContentType)
        only_analytics = (router.db_for_read(ContentType), router.db_for_read(Item))

    assert reads[0] in {"analytics_replica", "analytics_replica2"}
    assert reads[1] == "replica"
    assert writes == ("analytics", "default")
    assert after == ("analytics", "default")
    assert only_analytics == ("analytics", "replica")


def test_allow_migrate_only_on_each_apps_primary(routing):
    routing(APPS={"contenttypes": "analytics"})
    allow = ReadWriteRouter().allow_migrate

    assert allow("default", "testapp") is True
    assert allow("default", "contenttypes") is False
    assert allow("analytics", "contenttypes") is True
    assert allow("analytics", "testapp") is False
    assert allow("replica", "testapp") is False
    assert allow("analytics_replica", "contenttypes") is False
    assert allow("plain", "testapp") is None


def test_allow_migrate_without_apps_keeps_every_app_on_default(routing):
    routing()
    allow = ReadWriteRouter().allow_migrate

    assert allow("default", "contenttypes") is True
    assert allow("analytics", "contenttypes") is False
    assert allow("replica", "contenttypes") is False


def test_allow_relation_within_a_group_only(routing):
    routing()
    router = ReadWriteRouter()

    def on(alias: str) -> Item:
        item = Item(name=alias)
        item._state.db = alias
        return item

    assert router.allow_relation(on("default"), on("replica")) is True
    assert router.allow_relation(on("replica"), on("replica")) is True
    assert router.allow_relation(on("default"), on("plain")) is None
    assert router.allow_relation(on("plain"), on("plain")) is None


def test_unmanaged_aliases_get_no_opinion(routing):
    routing()
    router = ReadWriteRouter()
    item = Item(name="elsewhere")
    item._state.db = "plain"

    assert router.db_for_read(Item, instance=item) is None
    assert router.db_for_write(Item, instance=item) is None


def test_object_read_from_the_replica_is_written_to_the_primary(routing, caught_up):
    routing()
    with _admin("default") as primary:
        primary.execute("INSERT INTO testapp_item (name) VALUES ('loaded')")
    caught_up()

    with routing_scope():
        item = Item.objects.get(name="loaded")
        loaded_from = item._state.db
        item.name = "saved"
        item.save()

    assert loaded_from == "replica"
    assert item._state.db == "default"
    with _admin("default") as primary:
        assert primary.execute(
            "SELECT name FROM testapp_item WHERE id = %s", [item.pk]
        ).fetchone() == ("saved",)


def test_atomic_on_the_primary_sends_orm_reads_there(routing, caught_up):
    routing()

    with routing_scope():
        with transaction.atomic():
            inside = Item.objects.all().db
        outside = Item.objects.all().db

    assert (inside, outside) == ("default", "replica")


def _aget(client: AsyncClient, path: str, data: dict[str, str] | None = None) -> Any:
    """One request through Django's ASGI test client, from sync code."""

    async def request() -> Any:
        # A coroutine function of our own: AsyncClient.get is not one on Django 4.2.
        return await client.get(path, data)

    return async_to_sync(request)()


# -- async views under an ASGI client ----------------------------------------------------------


def test_async_view_reads_its_write_on_the_primary(routing, paused_replay):
    routing()
    client = AsyncClient()

    replies = [
        _aget(client, "/router/async/write-then-read/", {"name": f"a{n}"}).json()
        for n in range(5)
    ]
    fresh = _aget(client, "/router/async/read/", {"name": "a0"}).json()

    assert [(r["found"], r["server"]["in_recovery"]) for r in replies] == [
        (True, False)
    ] * 5
    assert (fresh["found"], fresh["server"]["in_recovery"]) == (False, True)


def test_async_view_reads_in_atomic_and_under_use_primary_on_the_primary(
    routing, caught_up
):
    routing()
    client = AsyncClient()

    atomic = _aget(client, "/router/async/read-in-atomic/").json()
    decorated = _aget(client, "/router/async/primary-by-decorator/").json()
    fresh = _aget(client, "/router/async/read/").json()

    assert atomic["inside"]["in_recovery"] is False
    assert decorated["server"]["in_recovery"] is False
    assert fresh["server"]["in_recovery"] is True


def test_async_causal_pin_holds_until_the_replica_replays(routing, paused_replay):
    routing(PIN_SECONDS=60, CAUSAL=True)
    client = AsyncClient()
    written = _aget(client, "/router/async/write/", {"name": "async"})

    pinned = _aget(client, "/router/async/read/", {"name": "async"}).json()
    paused_replay.resume()

    def back_on_replica() -> bool:
        reply = _aget(client, "/router/async/read/", {"name": "async"}).json()
        assert reply["found"] is True
        return reply["server"]["in_recovery"]

    _wait_until(back_on_replica, "reads did not return to the replica")
    assert written.headers["X-Poolconf-Pin"]
    assert (pinned["found"], pinned["server"]["in_recovery"]) == (True, False)


def test_stopped_replica_costs_no_async_read(routing, cluster, caught_up):
    routing()
    client = AsyncClient()
    assert _aget(client, "/router/async/read/").json()["server"]["in_recovery"]
    connections.close_all()  # the test client keeps the connection; a server would not

    cluster.replica.stop()
    try:
        replies = []
        for _ in range(10):
            replies.append(_aget(client, "/router/async/read/"))
            connections.close_all()
    finally:
        cluster.replica.start()

    assert [r.status_code for r in replies] == [200] * 10
    assert [r.json()["server"]["in_recovery"] for r in replies] == [False] * 10


def test_async_use_primary_decorator_and_context_manager():
    seen = []

    @use_primary
    async def decorated() -> None:
        seen.append(scope.FORCED.get())

    async def managed() -> None:
        async with use_replica():
            seen.append(scope.FORCED.get())
        seen.append(scope.FORCED.get())

    async_to_sync(decorated)()
    async_to_sync(managed)()

    assert seen == ["primary", "replica", None]
    assert decorated.__name__ == "decorated"


# -- edges ------------------------------------------------------------------------------


@pytest.fixture
def replica_pool():
    """Give the replica alias other pool options for one test."""
    settings_dict = connections.settings["replica"]
    original = settings_dict["POOL"]

    def set_options(**options: Any) -> None:
        connections["replica"].close()
        settings_dict["POOL"] = {**original, **options}

    yield set_options
    connections["replica"].close()
    settings_dict["POOL"] = original
    engines.dispose("replica")


def test_saturated_replica_pool_sends_the_read_to_the_primary(
    routing, replica_pool, caught_up, caplog
):
    routing()
    replica_pool(pool_size=1, max_overflow=0, pool_timeout=0.1)

    with get_engine("replica").connect(), routing_scope():
        reply = server()

    assert reply["in_recovery"] is False
    assert "no free connection for replica 'replica'" in caplog.text
    assert replicas.replica_states()["replica"].breaker == "closed"


def test_pin_cookie_is_http_only_lax_and_expires_with_the_pin(routing, caught_up):
    browser = routing(PIN_SECONDS=2.5)

    reply = browser.get("/router/write/", name="cookie")

    cookie: SimpleCookie = SimpleCookie()
    cookie.load(reply.header("Set-Cookie"))
    morsel = cookie["poolconf_pin"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert morsel["max-age"] == "3"
    assert not morsel["secure"]


def test_signed_token_of_the_wrong_shape_is_ignored(routing, caught_up):
    browser = routing(PIN_SECONDS=30)
    for payload in (["default"], {"default": "soon"}, {"default": [1e12, "0/1"]}):
        token = signing.dumps(payload, salt=SIGNING_SALT)

        reply = browser.get("/router/read/", headers={"X-Poolconf-Pin": token}).json()

        assert reply["server"]["in_recovery"] is True


def test_token_signed_for_something_else_is_ignored(routing, caught_up):
    browser = routing(PIN_SECONDS=30)
    token = signing.dumps({"default": [time.time() + 30, None]})

    reply = browser.get("/router/read/", headers={"X-Poolconf-Pin": token}).json()

    assert reply["server"]["in_recovery"] is True


@pytest.mark.django_db(transaction=True, databases=["default", "replica", *ANALYTICS])
def test_pin_of_one_primary_survives_a_write_to_another(routing, caught_up):
    browser = routing(PIN_SECONDS=30, APPS={"contenttypes": "analytics"})
    first = browser.get("/router/write/", name="default pin").header("X-Poolconf-Pin")

    def write_analytics(request):
        ReadWriteRouter().db_for_write(ContentType)
        return HttpResponse()

    request = RequestFactory().get("/", headers={"X-Poolconf-Pin": first})
    second = ReadWriteMiddleware(write_analytics)(request).headers["X-Poolconf-Pin"]
    browser.cookies.clear()
    pinned = browser.get("/router/read/", headers={"X-Poolconf-Pin": second}).json()

    assert sorted(signing.loads(second, salt=SIGNING_SALT)) == ["analytics", "default"]
    assert pinned["server"]["in_recovery"] is False


def test_raw_write_before_any_routed_query_of_a_thread_is_seen(routing, caught_up):
    # As migrate's DDL in a script that then reads through the router: the
    # connection is opened, and written to, before the router is first asked.
    routing()
    results: list[bool] = []

    def thread_body() -> None:
        try:
            with routing_scope():
                with connections["default"].cursor() as cursor:
                    cursor.execute("INSERT INTO testapp_item (name) VALUES ('early')")
                results.append(server()["in_recovery"])
        finally:
            connections.close_all()

    thread = threading.Thread(target=thread_body)
    thread.start()
    thread.join()

    assert results == [False]


@pytest.mark.slow
def test_replica_crash_under_load_fails_only_reads_in_flight(
    routing, cluster, caught_up
):
    routing()
    stop = threading.Event()
    # (began, ended, status, served by the replica)
    results: list[tuple[float, float, int, bool | None]] = []

    def worker() -> None:
        browser = Browser()
        try:
            while not stop.is_set():
                began = time.monotonic()
                reply = browser.get("/router/read/")
                on_replica = (
                    reply.json()["server"]["in_recovery"]
                    if reply.status == 200
                    else None
                )
                results.append((began, time.monotonic(), reply.status, on_replica))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        crashed = time.monotonic()
        cluster.replica.stop(mode="immediate")
        # pg_ctl has returned: the server is gone, so a read that begins now
        # is not in flight and must be served (by the primary).
        stopped = time.monotonic()
        time.sleep(2)
    finally:
        cluster.replica.start()
    restarted = time.monotonic()
    try:
        _wait_until(
            lambda: any(began > restarted and on for began, _, _, on in results[-50:]),
            "reads did not return to the replica",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    failed = [
        (round(began - crashed, 3), round(ended - crashed, 3), status)
        for began, ended, status, _ in results
        if status != 200
    ]
    # At most one read in flight per thread when the server died; none after.
    assert len(failed) <= len(threads), failed
    assert all(began < stopped - crashed for began, _, _ in failed), (
        round(stopped - crashed, 3),
        failed,
    )
    assert any(
        on is False for began, _, _, on in results if stopped < began < restarted
    )
