"""Helpers for the settings tests. Pure configuration: no database needed."""

from __future__ import annotations

import re

from django_poolconf.conf.pool import validate_alias

ENGINE = "django_poolconf.backends.postgresql"


def whole(message):
    """A ``match`` pattern for exactly ``message``, not merely a message containing it."""
    return rf"\A{re.escape(message)}\Z"


def pooled(**extra):
    return {"ENGINE": ENGINE, "NAME": "app", "CONN_MAX_AGE": 0, "OPTIONS": {}, **extra}


def with_pool(**pool):
    return pooled(POOL=pool)


def validate(settings_dict, *, alias="default", poolconf=None, databases=None):
    return validate_alias(
        alias,
        settings_dict,
        databases=databases,
        poolconf={} if poolconf is None else poolconf,
    )


def ids(problems):
    return [problem.id for problem in problems]


def only_problem(settings_dict, **kwargs):
    result, problems = validate(settings_dict, **kwargs)
    assert result is None
    assert len(problems) == 1, problems
    return problems[0]
