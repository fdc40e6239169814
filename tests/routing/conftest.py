"""Fixtures of the router's tests: the router installed, the replica caught up or paused."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from http.cookies import SimpleCookie
from typing import Any

import psycopg
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.db import connections
from django.test import RequestFactory, override_settings

from django_poolconf import engines, replicas
from django_poolconf.routing import router

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


def admin_connection(alias: str, dbname: str | None = None) -> psycopg.Connection[Any]:
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


def wait_until(condition: Callable[[], bool], what: str) -> float:
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
        with admin_connection("default", "postgres") as primary:
            primary.execute("SET synchronous_commit = on")
            primary.execute("SELECT pg_logical_emit_message(true, 'test', '')")
            (target,) = primary.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        with admin_connection("replica", "postgres") as replica:
            wait_until(
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
        with admin_connection("replica") as replica:
            return replica.execute(
                "SELECT EXISTS (SELECT FROM testapp_item WHERE name = %s)", [name]
            ).fetchone()[0]


@pytest.fixture
def paused_replay(caught_up) -> Iterator[Replay]:
    """The replica, with its replay paused; resumed after the test, whatever happens."""
    with admin_connection("replica", "postgres") as replica:
        replica.execute("SELECT pg_wal_replay_pause()")
        try:
            yield Replay(replica)
        finally:
            replica.execute("SELECT pg_wal_replay_resume()")
