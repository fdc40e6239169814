"""conf.router: POOLCONF["ROUTER"]. No database needed."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_poolconf.conf.router import RouterSettings, router_settings, validate_router
from django_poolconf.conf.rules import Problem
from tests.conf.conftest import pooled, whole

# POOLCONF["ROUTER"]: E012 to E015, W003

ROUTER_KEYS_TEXT = (
    "Valid keys are 'BALANCE', 'PIN_SECONDS', 'CAUSAL', 'MAX_REPLICA_LAG', "
    "'CHECK_INTERVAL', 'BACKOFF', 'MAX_BACKOFF', 'APPS', 'COOKIE_NAME', 'HEADER_NAME'."
)


def router_problems(router, **kwargs):
    return validate_router({"ROUTER": router}, **kwargs)[1]


def test_router_defaults_without_router():
    assert validate_router({}) == (RouterSettings(), [])
    assert RouterSettings() == RouterSettings(
        balance="round_robin",
        pin_seconds=None,
        causal=False,
        max_replica_lag=None,
        check_interval=1.0,
        backoff=1.0,
        max_backoff=30.0,
        apps={},
        cookie_name="poolconf_pin",
        header_name="X-Poolconf-Pin",
    )


def test_router_settings_are_read_in_lower_case():
    databases = {"default": pooled(), "analytics": pooled()}
    router = {
        "BALANCE": "least_busy",
        "PIN_SECONDS": 15,
        "CAUSAL": True,
        "MAX_REPLICA_LAG": 2,
        "CHECK_INTERVAL": 0.5,
        "BACKOFF": 2,
        "MAX_BACKOFF": 60,
        "APPS": {"reports": "analytics"},
        "COOKIE_NAME": "pin",
        "HEADER_NAME": "X-Pin",
    }

    result = router_settings({"ROUTER": router}, databases=databases)

    assert result == RouterSettings(
        balance="least_busy",
        pin_seconds=15.0,
        causal=True,
        max_replica_lag=2.0,
        check_interval=0.5,
        backoff=2.0,
        max_backoff=60.0,
        apps={"reports": "analytics"},
        cookie_name="pin",
        header_name="X-Pin",
    )
    assert isinstance(result.pin_seconds, float)


def test_router_not_a_dict_is_e012():
    assert router_problems(["PIN_SECONDS"]) == [
        Problem(
            "E012",
            "POOLCONF['ROUTER'] must be a dict, got ['PIN_SECONDS'].",
            "Write ROUTER as a dict, e.g. {'PIN_SECONDS': 5}.",
        )
    ]


def test_router_unknown_key_suggests_closest():
    assert router_problems({"PIN_SECOND": 5}) == [
        Problem(
            "E012",
            "POOLCONF['ROUTER'] has an unknown key 'PIN_SECOND'.",
            f"Did you mean 'PIN_SECONDS'? {ROUTER_KEYS_TEXT}",
        )
    ]


@pytest.mark.parametrize(
    ("router", "message"),
    [
        (
            {"PIN_SECONDS": "5"},
            "POOLCONF['ROUTER']['PIN_SECONDS'] must be a number of seconds or None, "
            "got '5' (str). Write PIN_SECONDS as a Python value, not a string: e.g. "
            "PIN_SECONDS=5.",
        ),
        (
            {"MAX_REPLICA_LAG": 0},
            "POOLCONF['ROUTER']['MAX_REPLICA_LAG'] must be a number from 0.001 to "
            "86400 (seconds) or None, got 0. For example: MAX_REPLICA_LAG=5.",
        ),
        (
            {"CHECK_INTERVAL": None},
            "POOLCONF['ROUTER']['CHECK_INTERVAL'] must be a number of seconds, got None "
            "(NoneType). For example: CHECK_INTERVAL=1.",
        ),
        (
            {"BALANCE": "round-robin"},
            "POOLCONF['ROUTER']['BALANCE'] must be one of 'round_robin', 'least_busy', "
            "got 'round-robin'. Did you mean 'round_robin'?",
        ),
        (
            {"CAUSAL": 1, "PIN_SECONDS": 5},
            "POOLCONF['ROUTER']['CAUSAL'] must be True or False, got 1 (int). For "
            "example: CAUSAL=True.",
        ),
        (
            {"COOKIE_NAME": "my pin"},
            "POOLCONF['ROUTER']['COOKIE_NAME'] must be a cookie name: at most 64 "
            "letters, digits and !#$%&'*+-.^_`|~, got 'my pin'. For example: "
            "COOKIE_NAME='poolconf_pin'.",
        ),
        (
            {"COOKIE_NAME": "path"},
            "POOLCONF['ROUTER']['COOKIE_NAME'] must not name a cookie attribute or "
            "Django's own cookies, got 'path'. The pin would overwrite it, or never be "
            "read back. Use a name of your own, e.g. COOKIE_NAME='poolconf_pin'.",
        ),
        (
            {"COOKIE_NAME": "sessionid"},
            "POOLCONF['ROUTER']['COOKIE_NAME'] must not name a cookie attribute or "
            "Django's own cookies, got 'sessionid'. The pin would overwrite it, or "
            "never be read back. Use a name of your own, e.g. "
            "COOKIE_NAME='poolconf_pin'.",
        ),
        (
            {"COOKIE_NAME": "__Host-pin"},
            "POOLCONF['ROUTER']['COOKIE_NAME'] must not start with __Host- or "
            "__Secure-, got '__Host-pin'. The pin cookie is Secure on HTTPS requests "
            "only, and browsers drop such a cookie otherwise. For example: "
            "COOKIE_NAME='poolconf_pin'.",
        ),
        (
            {"HEADER_NAME": "Content-Length"},
            "POOLCONF['ROUTER']['HEADER_NAME'] must not name a header that HTTP, "
            "Django or proxies use, got 'Content-Length'. The pin would overwrite it, "
            "or never be read back. Use a name of your own, e.g. "
            "HEADER_NAME='X-Poolconf-Pin'.",
        ),
        (
            {"HEADER_NAME": "X_Poolconf_Pin"},
            "POOLCONF['ROUTER']['HEADER_NAME'] must be a header name: at most 64 "
            "letters, digits and hyphens, got 'X_Poolconf_Pin'. For example: "
            "HEADER_NAME='X-Poolconf-Pin'.",
        ),
        (
            {"PIN_SECONDS": 1e12},
            "POOLCONF['ROUTER']['PIN_SECONDS'] must be a number from 0.001 to 86400 "
            "(seconds) or None, got 1000000000000.0. For example: PIN_SECONDS=5.",
        ),
        (
            {"HEADER_NAME": b"X-Pin"},
            "POOLCONF['ROUTER']['HEADER_NAME'] must be a string, got b'X-Pin' (bytes). "
            "For example: HEADER_NAME='X-Poolconf-Pin'.",
        ),
        (
            {"BACKOFF": 10, "MAX_BACKOFF": 5},
            "POOLCONF['ROUTER']['MAX_BACKOFF'] (5) must be at least "
            "POOLCONF['ROUTER']['BACKOFF'] (10). The back-off starts at BACKOFF and "
            "doubles up to MAX_BACKOFF.",
        ),
    ],
)
def test_bad_router_value_is_e013(router, message):
    [problem] = router_problems(router)

    assert problem.id == "E013"
    with pytest.raises(ImproperlyConfigured, match=whole(message)):
        router_settings({"ROUTER": router})


@pytest.mark.parametrize(
    ("apps", "message"),
    [
        (
            {"reports": "analytcs"},
            "POOLCONF['ROUTER']['APPS']['reports'] names 'analytcs', which is not in "
            "DATABASES. Did you mean 'analytics'?",
        ),
        (
            {"reports": "replica"},
            "POOLCONF['ROUTER']['APPS']['reports'] names 'replica', which is a replica. "
            "Map the app to the primary: 'default'.",
        ),
        (
            {"reports": 1},
            "POOLCONF['ROUTER']['APPS']['reports'] must name a database alias, got 1. "
            "Map each app label to the alias of its primary, e.g. "
            "{'analytics': 'analytics'}.",
        ),
        (
            {"report": "analytics"},
            "POOLCONF['ROUTER']['APPS'] names the app 'report', which is not installed. "
            "Did you mean 'reports'?",
        ),
    ],
)
def test_bad_apps_entry_is_e014(apps, message):
    databases = {
        "default": pooled(),
        "replica": pooled(REPLICA_OF="default"),
        "analytics": pooled(),
    }

    [problem] = router_problems(
        {"APPS": apps}, databases=databases, app_labels=["reports", "auth"]
    )

    assert problem.id == "E014"
    assert str(problem) == message


def test_apps_not_a_dict_is_e013():
    assert router_problems({"APPS": ["reports"]}) == [
        Problem(
            "E013",
            "POOLCONF['ROUTER']['APPS'] must be a dict, got ['reports'].",
            "Write APPS as a dict, e.g. {'analytics': 'analytics'}.",
        )
    ]


def test_causal_without_pin_seconds_is_e015():
    assert router_problems({"CAUSAL": True}) == [
        Problem(
            "E015",
            "POOLCONF['ROUTER']['CAUSAL'] needs PIN_SECONDS.",
            "Set PIN_SECONDS too, e.g. 60: how long after a write a client's position "
            "is carried across requests.",
        )
    ]


def test_pin_without_the_middleware_is_w003_and_not_an_error():
    with override_settings(MIDDLEWARE=[]):
        result, problems = validate_router(
            {"ROUTER": {"PIN_SECONDS": 5}}, check_middleware=True
        )

    assert result == RouterSettings(pin_seconds=5.0)
    assert problems == [
        Problem(
            "W003",
            "POOLCONF['ROUTER']['PIN_SECONDS'] is set, but "
            "'django_poolconf.middleware.ReadWriteMiddleware' is not in MIDDLEWARE, so "
            "no client is pinned across requests.",
            "Add it to MIDDLEWARE, near the top: above the middleware whose writes "
            "should pin (sessions, authentication).",
        )
    ]


def test_router_settings_are_read_once_while_poolconf_is_unchanged():
    with override_settings(POOLCONF={"ROUTER": {"PIN_SECONDS": 5}}):
        first = router_settings()
        assert router_settings() is first
    with override_settings(POOLCONF={"ROUTER": {"PIN_SECONDS": 6}}):
        assert router_settings().pin_seconds == 6.0
