"""Every settings key works at both ends of its accepted range, against the real servers.

tests/conf/test_fuzz.py shows that what validation accepts is within these ranges;
here each end of every range runs: a request, a checkout that pings, the health check,
``poolstatus`` and the router's pins.
"""

from __future__ import annotations

import io
import time
from http.cookies import SimpleCookie

import pytest
import sqlalchemy.exc
from django.core.management import call_command
from django.db import connection, connections
from django.http import HttpResponse
from django.test import RequestFactory, override_settings
from hypothesis import example, given, settings
from hypothesis import strategies as st

from django_poolconf import engines, get_engine
from django_poolconf.conf.router import RouterSettings, validate_router
from django_poolconf.health import check_health, runner
from django_poolconf.routing import middleware, replicas
from django_poolconf.routing.scope import Scope
from tests.conftest import wsgi_get
from tests.routing.conftest import FAST, MIDDLEWARE, ROUTER, Browser

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])

YEAR = 31_536_000
DAY = 86_400
HOUR = 3_600
MAX_MS = 2_147_483_647

HIGHEST = {
    "pool_size": 10_000,
    "max_overflow": 10_000,
    "pool_timeout": HOUR,
    "pool_recycle": YEAR,
    "pre_ping_threshold": 0,  # so that the checkout pings, for validation_timeout
    "validation_timeout": HOUR,
    "connect_timeout": HOUR,
    "statement_timeout": MAX_MS,
    "read_timeout": DAY,
    "leak_detection_threshold": YEAR,
    "slow_checkout_ms": HOUR * 1000,
    "max_waiting": 1_000_000,
}
LOWEST = {
    "pool_size": 1,
    "max_overflow": 0,
    "pool_timeout": 0.001,
    "pool_recycle": 0.001,
    "pre_ping_threshold": 0,
    "validation_timeout": 0.001,
    "connect_timeout": 0.001,
    "statement_timeout": 0,
    "read_timeout": 1,
    "leak_detection_threshold": 0.001,
    "slow_checkout_ms": 0,
    "max_waiting": 0,
}


@pytest.fixture(autouse=True)
def fresh_pools():
    connections.close_all()
    engines.dispose_all()
    runner._probes.clear()
    replicas.reset()
    yield
    connections.close_all()
    engines.dispose_all()
    runner._probes.clear()
    replicas.reset()


def _run_requests(count: int = 3) -> list[int]:
    pids = []
    for _ in range(count):
        response = wsgi_get("/item/")
        assert response.status == 200, response.body[:300]
        pids.append(response.json()["pid"])
    return pids


def test_pool_at_the_top_of_every_range_serves_requests(pool_options):
    pool_options(**HIGHEST)

    _run_requests()
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        (shown,) = cursor.fetchone()
    connection.close()
    with get_engine().connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    report = check_health(["default"], timeout=10)
    out = io.StringIO()
    call_command("poolstatus", "--database", "default", stdout=out)

    assert shown == f"{MAX_MS}ms"
    assert report.status == "healthy"
    assert report["default"].capacity == 20_000
    assert "default" in out.getvalue()


def test_pool_at_the_bottom_of_every_range_serves_requests(pool_options):
    pool_options(**LOWEST)

    _run_requests()  # a ping that misses 1 ms replaces its connection: no error
    connection.ensure_connection()
    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.TimeoutError), get_engine().connect():
        pass  # the one connection is Django's
    waited = time.monotonic() - started
    connection.close()

    assert waited < 2.0
    assert _run_requests(1)


def test_health_at_the_ends_of_its_ranges_answers_within_its_timeout():
    top = {"TIMEOUT": HOUR, "CACHE": DAY, "MAX_REPLICA_LAG": DAY, "WORKERS": 10_000}
    with override_settings(POOLCONF={"HEALTH": {**top, "HOSTS": 10_000}}):
        slow = check_health()
        out = io.StringIO()
        call_command("poolstatus", stdout=out)
        call_command("check", stdout=io.StringIO())
    runner._probes.clear()
    with override_settings(POOLCONF={"HEALTH": {"TIMEOUT": 0.001, "CACHE": 0}}):
        started = time.monotonic()
        fast = check_health()
        took = time.monotonic() - started

    assert slow.status == "healthy"
    assert took < 1.0
    assert {health.reason for health in fast.databases} <= {None, "timeout"}


@pytest.mark.parametrize(
    "router",
    [
        {"PIN_SECONDS": DAY, "MAX_REPLICA_LAG": DAY, "CHECK_INTERVAL": HOUR},
        {"PIN_SECONDS": DAY, "BACKOFF": HOUR, "MAX_BACKOFF": DAY},
        {"PIN_SECONDS": 0.001, "MAX_REPLICA_LAG": 0.001, "CHECK_INTERVAL": 0.01},
        {"PIN_SECONDS": 0.001, "BACKOFF": 0.01, "MAX_BACKOFF": 0.01},
    ],
)
def test_router_at_the_ends_of_its_ranges_serves_writes_and_reads(router):
    with override_settings(
        POOLCONF={"ROUTER": {**FAST, **router}},
        DATABASE_ROUTERS=[ROUTER],
        MIDDLEWARE=[MIDDLEWARE],
    ):
        browser = Browser()
        wrote = browser.get("/router/write/", name="bounds")
        read = browser.get("/router/read/")
        # A replica failure opens its breaker: the monitor then waits up to BACKOFF.
        replicas.record_failure("replica", OSError("test"))
        after = browser.get("/router/read/")

    assert wrote.status == 200, wrote.body[:300]
    assert wrote.header("X-Poolconf-Pin") == browser.cookies["poolconf_pin"]
    assert read.status == 200
    assert after.status == 200
    assert after.json()["server"]["in_recovery"] is False


# -- the pin's cookie and header, whatever names validation accepts ---------------------


NAMES = st.one_of(
    st.from_regex(r"[A-Za-z0-9_!#$%&'*+.^`|~-]{1,70}", fullmatch=True),
    st.sampled_from(
        [
            "Content-Length",
            "Content-Type",
            "Set-Cookie",
            "Vary",
            "path",
            "Expires",
            "sessionid",
            "csrftoken",
            "django_language",
            "X-CSRFToken",
            "__Host-pin",
            "X_Poolconf_Pin",
        ]
    ),
)


@settings(max_examples=150, derandomize=True, database=None, deadline=None)
@given(cookie_name=NAMES, header_name=NAMES)
@example(cookie_name="path", header_name="X-Pin")
@example(cookie_name="pin", header_name="Content-Length")
def test_any_accepted_pin_names_round_trip_and_leave_other_headers_alone(
    cookie_name, header_name
):
    result, problems = validate_router(
        {"ROUTER": {"PIN_SECONDS": 5, "COOKIE_NAME": cookie_name}}
    )
    other, more = validate_router(
        {"ROUTER": {"PIN_SECONDS": 5, "HEADER_NAME": header_name}}
    )
    if result is None or other is None:
        return  # rejected: the fuzz test checks the message
    pin_settings = RouterSettings(
        pin_seconds=5.0, cookie_name=cookie_name, header_name=header_name
    )
    response = HttpResponse(b"{}", content_type="application/json")
    response["Content-Length"] = "2"
    before = {k.lower(): v for k, v in response.items()}
    scope = Scope()
    scope.written.add("default")
    request = RequestFactory().get("/")

    middleware._pin(request, response, scope, {}, pin_settings)

    token = response[header_name]
    after = {k.lower(): v for k, v in response.items()}
    assert {k: v for k, v in after.items() if k != header_name.lower()} == before
    cookie = SimpleCookie()
    cookie.load(response.cookies.output(header="").strip())
    assert cookie[cookie_name].value == token
    by_header = RequestFactory().get("/", headers={header_name: token})
    by_cookie = RequestFactory().get("/")
    by_cookie.COOKIES[cookie_name] = token
    assert set(middleware._read_pins(by_header, pin_settings)) == {"default"}
    assert set(middleware._read_pins(by_cookie, pin_settings)) == {"default"}
