"""conf.rules: problems, is_pooled and the POOLCONF setting. No database needed."""

from __future__ import annotations

import pytest
from django.test import override_settings

from django_poolconf.conf.rules import (
    POOLED_ENGINE_PREFIX,
    Problem,
    get_poolconf,
    is_pooled,
)

# is_pooled and get_poolconf


@pytest.mark.parametrize(
    "engine",
    ["django_poolconf.backends.postgresql", f"{POOLED_ENGINE_PREFIX}other"],
)
def test_poolconf_engines_are_pooled(engine):
    assert is_pooled({"ENGINE": engine})


@pytest.mark.parametrize(
    "settings_dict",
    [
        {"ENGINE": "django.db.backends.postgresql"},
        {"ENGINE": "django.db.backends.sqlite3"},
        {},
    ],
)
def test_other_engines_are_not_pooled(settings_dict):
    assert not is_pooled(settings_dict)


def test_get_poolconf_is_empty_when_unset():
    with override_settings(POOLCONF=None):
        assert get_poolconf() == {}


def test_get_poolconf_reads_setting():
    with override_settings(POOLCONF={"PRESET": "small_api"}):
        assert get_poolconf() == {"PRESET": "small_api"}


# Problem


def test_problem_str_joins_message_and_hint():
    assert str(Problem("E001", "Bad.", "Fix it.")) == "Bad. Fix it."


def test_problem_str_without_hint_is_message():
    assert str(Problem("E004", "Bad.")) == "Bad."


@pytest.mark.parametrize(("check_id", "is_error"), [("E001", True), ("W001", False)])
def test_problem_is_error_by_id(check_id, is_error):
    assert Problem(check_id, "Bad.").is_error is is_error
