"""conf.health: POOLCONF["HEALTH"]. No database needed."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_poolconf.conf.health import HealthSettings, health_settings
from django_poolconf.conf.pool import validate_poolconf
from django_poolconf.conf.rules import Problem
from tests.conf.conftest import pooled, validate, whole

# POOLCONF["HEALTH"]: E016


def health(poolconf_health):
    with override_settings(POOLCONF={"HEALTH": poolconf_health}):
        return health_settings()


def health_problems(value):
    return validate_poolconf({"HEALTH": value})


def test_health_defaults(monkeypatch):
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    with override_settings(POOLCONF=None):
        assert health_settings() == HealthSettings(
            timeout=5.0, cache=1.0, detail="none", token=None, max_replica_lag=None,
            workers=None, hosts=1,
        )  # fmt: skip


def test_health_values_are_read(monkeypatch):
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    options = {
        "TIMEOUT": 2, "CACHE": 0, "DETAIL": "token", "TOKEN": "s3cret-token",
        "MAX_REPLICA_LAG": 30, "WORKERS": 4, "HOSTS": 3,
    }  # fmt: skip

    result = health(options)

    assert result == HealthSettings(
        timeout=2.0, cache=0.0, detail="token", token="s3cret-token",
        max_replica_lag=30.0, workers=4, hosts=3,
    )  # fmt: skip
    assert isinstance(result.timeout, float)
    assert "s3cret-token" not in repr(result)


def test_health_workers_default_to_web_concurrency(monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "9")
    assert health({}).workers == 9
    assert health({"WORKERS": 2}).workers == 2
    monkeypatch.setenv("WEB_CONCURRENCY", "lots")
    assert health({}).workers is None


@pytest.mark.parametrize(
    ("value", "message", "hint"),
    [
        (
            {"TIMEOUT": 0},
            "POOLCONF['HEALTH']['TIMEOUT'] must be a number from 0.001 to 3600 (seconds), got 0.",
            "For example: TIMEOUT=5.",
        ),
        (
            {"TIMEOUT": 3e6},  # once accepted, and the probe failed on it
            "POOLCONF['HEALTH']['TIMEOUT'] must be a number from 0.001 to 3600 "
            "(seconds), got 3000000.0.",
            "For example: TIMEOUT=5.",
        ),
        (
            {"TIMEOUT": "5"},
            "POOLCONF['HEALTH']['TIMEOUT'] must be a number of seconds, got '5' (str).",
            "Write TIMEOUT as a Python value, not a string: e.g. TIMEOUT=5.",
        ),
        (
            {"CACHE": -1},
            "POOLCONF['HEALTH']['CACHE'] must be a number from 0 to 86400 (seconds), got -1.",
            "For example: CACHE=1.",
        ),
        (
            {"DETAIL": "staf"},
            "POOLCONF['HEALTH']['DETAIL'] must be one of 'none', 'staff', 'token', got 'staf'.",
            "Did you mean 'staff'?",
        ),
        (
            {"WORKERS": 0},
            "POOLCONF['HEALTH']['WORKERS'] must be an integer from 1 to 10000 or None, got 0.",
            "For example: WORKERS=4.",
        ),
        (
            {"HOSTS": 1.5},
            "POOLCONF['HEALTH']['HOSTS'] must be an integer, got 1.5 (float).",
            "For example: HOSTS=2.",
        ),
        (
            {"TIMOUT": 5},
            "POOLCONF['HEALTH'] has an unknown key 'TIMOUT'.",
            "Did you mean 'TIMEOUT'? Valid keys are 'TIMEOUT', 'CACHE', 'DETAIL', "
            "'TOKEN', 'MAX_REPLICA_LAG', 'WORKERS', 'HOSTS'.",
        ),
        (
            {"DETAIL": "token"},
            "POOLCONF['HEALTH']['DETAIL'] is 'token' but POOLCONF['HEALTH']['TOKEN'] is "
            "not set.",
            "Set TOKEN to a long random string, e.g. from the environment, or set DETAIL "
            "to 'none' or 'staff'.",
        ),
        (
            {"TOKEN": 123456},
            "POOLCONF['HEALTH']['TOKEN'] must be a non-empty string or None, got a value "
            "of type int.",
            "Read it from the environment, e.g. TOKEN=os.environ['HEALTH_TOKEN'].",
        ),
        (
            [("TIMEOUT", 5)],
            "POOLCONF['HEALTH'] must be a dict, got [('TIMEOUT', 5)].",
            "Write HEALTH as a dict, e.g. {'TIMEOUT': 5}.",
        ),
    ],
)
def test_bad_health_option_is_e010(value, message, hint):
    assert health_problems(value) == [Problem("E016", message, hint)]
    with (
        override_settings(POOLCONF={"HEALTH": value}),
        pytest.raises(ImproperlyConfigured, match=whole(f"{message} {hint}")),
    ):
        health_settings()


def test_bad_health_options_do_not_stop_connections():
    assert validate(pooled(), poolconf={"HEALTH": {"TIMEOUT": -1}})[1] == []
