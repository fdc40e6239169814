"""conf.pool: each alias's POOL, the presets and POOLCONF. No database needed."""

from __future__ import annotations

import dataclasses
import math
import os
from decimal import Decimal

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_poolconf.conf.pool import (
    POOL_KEYS,
    PoolSettings,
    pool_settings,
    validate_alias,
)
from django_poolconf.conf.rules import EXAMPLES, Problem
from tests.conf.conftest import (
    ENGINE,
    ids,
    only_problem,
    pooled,
    validate,
    whole,
    with_pool,
)

VALID_KEYS = (
    "Valid keys are 'pool_size', 'max_overflow', 'pool_timeout', 'pool_recycle', "
    "'pool_pre_ping', 'pre_ping_threshold', 'validation_timeout', 'connect_timeout', "
    "'statement_timeout', 'read_timeout', 'reset_on_return', 'thread_affinity', "
    "'checkout_scope', 'leak_detection_threshold', 'slow_checkout_ms', "
    "'max_waiting', 'connect_params', 'pgbouncer', 'pgbouncer_prepared_statements', "
    "'pgbouncer_admin'."
)
PRESET_CHOICES = (
    "'development', 'small_api', 'high_traffic', 'background_worker', 'auto'"
)


# Defaults and the dataclass


def test_defaults_without_pool():
    result, problems = validate(pooled())

    assert problems == []
    assert result == PoolSettings(
        alias="default",
        pool_size=5,
        max_overflow=10,
        pool_timeout=30.0,
        pool_recycle=3600.0,
        pool_pre_ping=True,
        pre_ping_threshold=0.5,
        validation_timeout=5.0,
        connect_timeout=10.0,
        statement_timeout=None,
        read_timeout=None,
        reset_on_return="auto",
        replica_of=None,
    )


def test_dataclass_defaults_match_validated_defaults():
    assert PoolSettings(alias="default") == pool_settings(
        "default", pooled(), poolconf={}
    )


def test_pool_none_means_defaults():
    assert pool_settings("default", pooled(POOL=None), poolconf={}) == PoolSettings(
        alias="default"
    )


def test_empty_pool_means_defaults():
    assert pool_settings("default", with_pool(), poolconf={}) == PoolSettings(
        alias="default"
    )


def test_result_carries_alias():
    assert pool_settings("analytics", pooled(), poolconf={}).alias == "analytics"


def test_capacity_is_pool_size_plus_max_overflow():
    assert PoolSettings(alias="default", pool_size=7, max_overflow=3).capacity == 10


def test_default_capacity_is_fifteen():
    assert PoolSettings(alias="default").capacity == 15


def test_pool_settings_is_frozen():
    result = PoolSettings(alias="default")

    with pytest.raises(dataclasses.FrozenInstanceError):
        result.pool_size = 10  # type: ignore[misc]


def test_pool_settings_is_keyword_only():
    with pytest.raises(TypeError):
        PoolSettings("default")  # type: ignore[misc]


def test_pool_keys_are_sqlalchemy_style_option_names():
    assert POOL_KEYS == (
        "pool_size",
        "max_overflow",
        "pool_timeout",
        "pool_recycle",
        "pool_pre_ping",
        "pre_ping_threshold",
        "validation_timeout",
        "connect_timeout",
        "statement_timeout",
        "read_timeout",
        "reset_on_return",
        "thread_affinity",
        "checkout_scope",
        "leak_detection_threshold",
        "slow_checkout_ms",
        "max_waiting",
        "connect_params",
        "pgbouncer",
        "pgbouncer_prepared_statements",
        "pgbouncer_admin",
    )


# Good values


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("pool_size", 1),
        ("pool_size", 50),
        ("max_overflow", 0),
        ("max_overflow", 100),
        ("pool_timeout", 0.1),
        ("pool_timeout", 30.0),
        ("pool_recycle", 60.5),
        ("pool_recycle", None),
        ("pool_pre_ping", False),
        ("pool_pre_ping", True),
        ("pre_ping_threshold", 0.0),
        ("pre_ping_threshold", 2.5),
        ("validation_timeout", 0.25),
        ("connect_timeout", 3.5),
        ("statement_timeout", 0),
        ("statement_timeout", 30_000),
        ("statement_timeout", None),
        ("reset_on_return", "auto"),
        ("reset_on_return", "rollback"),
        ("reset_on_return", "full"),
        ("max_waiting", 0),
        ("max_waiting", 200),
        ("connect_params", None),
        ("connect_params", "tests.backends.test_credentials.vault_params"),
        ("pgbouncer", None),
        ("pgbouncer", "transaction"),
        ("pgbouncer", "session"),
        ("pgbouncer_prepared_statements", True),
        ("pgbouncer_prepared_statements", False),
        ("pgbouncer_admin", None),
    ],
)
def test_good_value_is_accepted(key, value):
    result, problems = validate(with_pool(**{key: value}))

    assert problems == []
    assert getattr(result, key) == value
    assert type(getattr(result, key)) is type(value)


@pytest.mark.parametrize(
    "key",
    [
        "pool_timeout",
        "pool_recycle",
        "pre_ping_threshold",
        "validation_timeout",
        "connect_timeout",
        "read_timeout",
    ],
)
def test_integer_for_seconds_key_becomes_float(key):
    result = pool_settings("default", with_pool(**{key: 2}), poolconf={})

    assert getattr(result, key) == 2.0
    assert type(getattr(result, key)) is float


def test_zero_pre_ping_threshold_becomes_float():
    result = pool_settings("default", with_pool(pre_ping_threshold=0), poolconf={})

    assert result.pre_ping_threshold == 0.0
    assert type(result.pre_ping_threshold) is float


@pytest.mark.parametrize("key", ["pool_size", "max_overflow", "statement_timeout"])
def test_integer_keys_stay_int(key):
    result = pool_settings("default", with_pool(**{key: 7}), poolconf={})

    assert type(getattr(result, key)) is int


def test_several_good_keys_together():
    result = pool_settings(
        "default",
        with_pool(
            pool_size=12,
            max_overflow=3,
            pool_timeout=2,
            pool_recycle=None,
            pool_pre_ping=False,
            statement_timeout=5000,
            reset_on_return="full",
        ),
        poolconf={},
    )

    assert result == PoolSettings(
        alias="default",
        pool_size=12,
        max_overflow=3,
        pool_timeout=2.0,
        pool_recycle=None,
        pool_pre_ping=False,
        statement_timeout=5000,
        reset_on_return="full",
    )


# Bad types: E003


def type_message(key, expected, shown, type_name, example):
    hint = (
        f"Write {key} as a Python value, not a string: e.g. {key}={example}."
        if type_name == "str"
        else f"For example: {key}={example}."
    )
    return (
        f"DATABASES['default']['POOL'][{key!r}] must be {expected}, got {shown} "
        f"({type_name}). {hint}"
    )


@pytest.mark.parametrize(
    ("key", "value", "expected", "shown", "type_name", "example"),
    [
        ("pool_size", "10", "an integer", "'10'", "str", "10"),
        ("pool_size", True, "an integer", "True", "bool", "10"),
        ("pool_size", 10.0, "an integer", "10.0", "float", "10"),
        ("pool_size", None, "an integer", "None", "NoneType", "10"),
        ("max_overflow", "5", "an integer", "'5'", "str", "10"),
        ("max_overflow", False, "an integer", "False", "bool", "10"),
        ("max_overflow", None, "an integer", "None", "NoneType", "10"),
        ("statement_timeout", "30s", "an integer or None", "'30s'", "str", "30000"),
        ("statement_timeout", True, "an integer or None", "True", "bool", "30000"),
        ("statement_timeout", 1.5, "an integer or None", "1.5", "float", "30000"),
        ("pool_timeout", "30", "a number of seconds", "'30'", "str", "30"),
        ("pool_timeout", True, "a number of seconds", "True", "bool", "30"),
        ("pool_timeout", None, "a number of seconds", "None", "NoneType", "30"),
        (
            "pool_timeout",
            Decimal("30"),
            "a number of seconds",
            "Decimal('30')",
            "Decimal",
            "30",
        ),
        (
            "pool_recycle",
            "3600",
            "a number of seconds or None",
            "'3600'",
            "str",
            "3600",
        ),
        ("pool_recycle", False, "a number of seconds or None", "False", "bool", "3600"),
        ("pre_ping_threshold", "0.5", "a number of seconds", "'0.5'", "str", "0.5"),
        ("pre_ping_threshold", None, "a number of seconds", "None", "NoneType", "0.5"),
        ("validation_timeout", "5", "a number of seconds", "'5'", "str", "5"),
        ("validation_timeout", None, "a number of seconds", "None", "NoneType", "5"),
        ("connect_timeout", "10", "a number of seconds", "'10'", "str", "10"),
        ("connect_timeout", None, "a number of seconds", "None", "NoneType", "10"),
        ("pool_pre_ping", "true", "True or False", "'true'", "str", "True"),
        ("pool_pre_ping", 1, "True or False", "1", "int", "True"),
        ("pool_pre_ping", None, "True or False", "None", "NoneType", "True"),
    ],
)
def test_bad_type_is_e003(key, value, expected, shown, type_name, example):
    message = type_message(key, expected, shown, type_name, example)

    problem = only_problem(with_pool(**{key: value}))

    assert problem.id == "E003"
    with pytest.raises(ImproperlyConfigured, match=whole(message)):
        pool_settings("default", with_pool(**{key: value}), poolconf={})


def test_long_bad_value_is_cut_in_message():
    problem = only_problem(with_pool(pool_size="x" * 100))

    assert problem.msg == (
        "DATABASES['default']['POOL']['pool_size'] must be an integer, got "
        f"'{'x' * 56}... (str)."
    )


# Bad ranges and choices: E004


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("pool_size", 0, "must be an integer from 1 to 10000, got 0."),
        ("pool_size", -1, "must be an integer from 1 to 10000, got -1."),
        ("max_overflow", -1, "must be an integer from 0 to 10000, got -1."),
        (
            "statement_timeout",
            -1,
            "must be an integer from 0 to 2147483647 or None, got -1.",
        ),
        ("pool_timeout", 0, "must be a number from 0.001 to 3600 (seconds), got 0."),
        (
            "pool_timeout",
            -1.5,
            "must be a number from 0.001 to 3600 (seconds), got -1.5.",
        ),
        (
            "pool_timeout",
            math.nan,
            "must be a number from 0.001 to 3600 (seconds), got nan.",
        ),
        (
            "pool_timeout",
            math.inf,
            "must be a number from 0.001 to 3600 (seconds), got inf.",
        ),
        (
            "pool_timeout",
            -math.inf,
            "must be a number from 0.001 to 3600 (seconds), got -inf.",
        ),
        (
            "pool_recycle",
            0,
            "must be a number from 0.001 to 31536000 (seconds) or None, got 0.",
        ),
        (
            "pool_recycle",
            math.inf,
            "must be a number from 0.001 to 31536000 (seconds) or None, got inf.",
        ),
        (
            "pre_ping_threshold",
            -0.1,
            "must be a number from 0 to 86400 (seconds), got -0.1.",
        ),
        (
            "pre_ping_threshold",
            math.nan,
            "must be a number from 0 to 86400 (seconds), got nan.",
        ),
        (
            "validation_timeout",
            0,
            "must be a number from 0.001 to 3600 (seconds), got 0.",
        ),
        (
            "validation_timeout",
            math.inf,
            "must be a number from 0.001 to 3600 (seconds), got inf.",
        ),
        (
            "connect_timeout",
            0.0,
            "must be a number from 0.001 to 3600 (seconds), got 0.0.",
        ),
        (
            "connect_timeout",
            -10,
            "must be a number from 0.001 to 3600 (seconds), got -10.",
        ),
        # Accepted once, and then failing at run time:
        (
            "statement_timeout",
            2**31,
            "must be an integer from 0 to 2147483647 or None, got 2147483648.",
        ),
        (
            "validation_timeout",
            3e6,
            "must be a number from 0.001 to 3600 (seconds), got 3000000.0.",
        ),
        ("pool_size", 10**30, f"must be an integer from 1 to 10000, got {10**30}."),
        (
            "pool_timeout",
            5e-324,
            "must be a number from 0.001 to 3600 (seconds), got 5e-324.",
        ),
        (
            "connect_timeout",
            5e-324,
            "must be a number from 0.001 to 3600 (seconds), got 5e-324.",
        ),
        (
            "read_timeout",
            0.5,
            "must be a number from 1 to 86400 (seconds) or None, got 0.5.",
        ),
    ],
)
def test_out_of_range_is_e004(key, value, message):
    expected = (
        f"DATABASES['default']['POOL'][{key!r}] {message} "
        f"For example: {key}={EXAMPLES[key]}."
    )

    problem = only_problem(with_pool(**{key: value}))

    assert problem.id == "E004"
    assert problem.hint == f"For example: {key}={EXAMPLES[key]}."
    with pytest.raises(ImproperlyConfigured, match=whole(expected)):
        pool_settings("default", with_pool(**{key: value}), poolconf={})


def test_huge_integer_for_seconds_key_is_e004():
    assert ids(validate(with_pool(pool_timeout=10**400))[1]) == ["E004"]


def test_unknown_pgbouncer_mode_suggests_closest():
    message = (
        "DATABASES['default']['POOL']['pgbouncer'] must be one of 'transaction', "
        "'session' or None, got 'transactions'. Did you mean 'transaction'?"
    )

    problem = only_problem(with_pool(pgbouncer="transactions"))

    assert problem.id == "E004"
    with pytest.raises(ImproperlyConfigured, match=whole(message)):
        pool_settings("default", with_pool(pgbouncer="transactions"), poolconf={})


def test_reset_policy_behind_pgbouncer_in_transaction_mode_is_rollback():
    def policy(**pool):
        return pool_settings("default", with_pool(**pool), poolconf={}).reset_policy

    assert policy() == "auto"
    assert policy(pgbouncer="session") == "auto"
    assert policy(pgbouncer="transaction") == "rollback"
    assert policy(pgbouncer="transaction", reset_on_return="full") == "full"


def test_unknown_reset_on_return_suggests_closest():
    message = (
        "DATABASES['default']['POOL']['reset_on_return'] must be one of 'auto', "
        "'rollback', 'full', got 'Rollback'. Did you mean 'rollback'?"
    )

    problem = only_problem(with_pool(reset_on_return="Rollback"))

    assert problem.id == "E004"
    with pytest.raises(ImproperlyConfigured, match=whole(message)):
        pool_settings("default", with_pool(reset_on_return="Rollback"), poolconf={})


@pytest.mark.parametrize(
    ("value", "shown"), [("never", "'never'"), (None, "None"), (1, "1")]
)
def test_bad_reset_on_return_without_near_match_has_no_hint(value, shown):
    problem = only_problem(with_pool(reset_on_return=value))

    assert problem == Problem(
        "E004",
        "DATABASES['default']['POOL']['reset_on_return'] must be one of 'auto', "
        f"'rollback', 'full', got {shown}.",
    )


# Unknown keys and POOL shape: E002, E001


def test_unknown_key_suggests_closest():
    message = (
        "DATABASES['default']['POOL'] has an unknown key 'pool_szie'. "
        f"Did you mean 'pool_size'? {VALID_KEYS}"
    )

    problem = only_problem(with_pool(pool_szie=3))

    assert problem.id == "E002"
    assert problem.hint == f"Did you mean 'pool_size'? {VALID_KEYS}"
    with pytest.raises(ImproperlyConfigured, match=whole(message)):
        pool_settings("default", with_pool(pool_szie=3), poolconf={})


def test_unknown_key_without_near_match_lists_valid_keys():
    problem = only_problem(with_pool(colour="blue"))

    assert problem == Problem(
        "E002", "DATABASES['default']['POOL'] has an unknown key 'colour'.", VALID_KEYS
    )


def test_non_string_key_is_unknown():
    problem = only_problem(pooled(POOL={1: 2}))

    assert problem == Problem(
        "E002", "DATABASES['default']['POOL'] has an unknown key 1.", VALID_KEYS
    )


def test_unknown_key_is_not_dropped_silently_next_to_good_keys():
    result, problems = validate(with_pool(pool_size=3, max_overflw=1))

    assert result is None
    assert ids(problems) == ["E002"]


@pytest.mark.parametrize(
    ("pool", "shown"),
    [
        ([("pool_size", 3)], "[('pool_size', 3)]"),
        (10, "10"),
        ("pool_size=10", "'pool_size=10'"),
    ],
)
def test_pool_not_a_dict_is_e001(pool, shown):
    message = (
        f"DATABASES['default']['POOL'] must be a dict, got {shown}. "
        "Write POOL as a dict, e.g. {'pool_size': 10}."
    )

    problem = only_problem(pooled(POOL=pool))

    assert problem.id == "E001"
    with pytest.raises(ImproperlyConfigured, match=whole(message)):
        pool_settings("default", pooled(POOL=pool), poolconf={})


def test_every_bad_key_is_reported():
    _, problems = validate(
        with_pool(pool_size=0, max_overflow="2", pool_szie=1, reset_on_return="x")
    )

    assert ids(problems) == ["E004", "E003", "E002", "E004"]


# CONN_MAX_AGE, OPTIONS["pool"]: W007, W008, W009 (E005 and E006 before issue 13)


def only_warning(settings_dict):
    result, problems = validate(settings_dict)
    assert result is not None  # a warning never stops the alias
    assert len(problems) == 1, problems
    return problems[0]


@pytest.mark.parametrize(
    ("max_age", "shown"), [(60, "60"), (None, "None"), (0.5, "0.5")]
)
def test_conn_max_age_other_than_zero_is_w007_and_accepted(max_age, shown):
    message = (
        f"DATABASES['default']['CONN_MAX_AGE'] is {shown}: each thread keeps its "
        "connection checked out of the pool between requests, so threads beyond "
        "pool_size + max_overflow wait for one."
    )

    problem = only_warning(pooled(CONN_MAX_AGE=max_age))

    assert (problem.id, problem.msg) == ("W007", message)
    assert pool_settings("default", pooled(CONN_MAX_AGE=max_age), poolconf={})


def test_missing_conn_max_age_is_accepted():
    settings_dict = pooled()
    del settings_dict["CONN_MAX_AGE"]

    assert validate(settings_dict)[1] == []


@pytest.mark.parametrize("pool", [True, {"min_size": 2}])
def test_django_pool_option_is_w008_and_accepted(pool):
    message = (
        "DATABASES['default']['OPTIONS']['pool'] is set: Django's own pool serves "
        "this alias, and its POOL is ignored."
    )

    problem = only_warning(pooled(OPTIONS={"pool": pool}))

    assert (problem.id, problem.msg) == ("W008", message)
    assert pool_settings("default", pooled(OPTIONS={"pool": pool}), poolconf={})


@pytest.mark.parametrize(("pool", "shown"), [(False, "False"), ({}, "{}")])
def test_false_django_pool_option_is_w009_and_accepted(pool, shown):
    message = (
        f"DATABASES['default']['OPTIONS']['pool'] is {shown}: this alias opens a new "
        "connection per request, and its POOL is ignored."
    )

    problem = only_warning(pooled(OPTIONS={"pool": pool}))

    assert (problem.id, problem.msg) == ("W009", message)


def test_none_django_pool_option_is_accepted():
    assert validate(pooled(OPTIONS={"pool": None}))[1] == []


def test_other_options_are_accepted():
    assert validate(pooled(OPTIONS={"sslmode": "require"}))[1] == []


# POOLCONF: E007, E008, E001


@pytest.mark.parametrize(
    ("poolconf", "shown"), [(["small_api"], "['small_api']"), ("x", "'x'")]
)
def test_poolconf_not_a_dict_is_e007(poolconf, shown):
    message = (
        f"POOLCONF must be a dict, got {shown}. "
        "Write POOLCONF as a dict, e.g. {'PRESET': 'small_api'}."
    )

    problem = only_problem(pooled(), poolconf=poolconf)

    assert problem.id == "E007"
    with pytest.raises(ImproperlyConfigured, match=whole(message)):
        pool_settings("default", pooled(), poolconf=poolconf)


def test_poolconf_unknown_key_suggests_closest():
    message = (
        "POOLCONF has an unknown key 'PRESETS'. Did you mean 'PRESET'? "
        "Valid keys are 'PRESET', 'POOL', 'ROUTER', 'HEALTH'."
    )

    problem = only_problem(pooled(), poolconf={"PRESETS": "small_api"})

    assert problem.id == "E007"
    with pytest.raises(ImproperlyConfigured, match=whole(message)):
        pool_settings("default", pooled(), poolconf={"PRESETS": "small_api"})


def test_poolconf_unknown_key_without_near_match_lists_valid_keys():
    problem = only_problem(pooled(), poolconf={"SIZE": 3})

    assert problem == Problem(
        "E007",
        "POOLCONF has an unknown key 'SIZE'.",
        "Valid keys are 'PRESET', 'POOL', 'ROUTER', 'HEALTH'.",
    )


def test_unknown_preset_suggests_closest():
    message = (
        f"POOLCONF['PRESET'] must be one of {PRESET_CHOICES}, got 'smal_api'. "
        "Did you mean 'small_api'?"
    )

    problem = only_problem(pooled(), poolconf={"PRESET": "smal_api"})

    assert problem.id == "E008"
    with pytest.raises(ImproperlyConfigured, match=whole(message)):
        pool_settings("default", pooled(), poolconf={"PRESET": "smal_api"})


@pytest.mark.parametrize(
    ("preset", "shown"), [("huge", "'huge'"), (20, "20"), ("", "''")]
)
def test_unknown_preset_without_near_match_has_no_hint(preset, shown):
    problem = only_problem(pooled(), poolconf={"PRESET": preset})

    assert problem == Problem(
        "E008", f"POOLCONF['PRESET'] must be one of {PRESET_CHOICES}, got {shown}."
    )


def test_poolconf_pool_not_a_dict_is_e001():
    problem = only_problem(pooled(), poolconf={"POOL": 10})

    assert problem == Problem(
        "E001",
        "POOLCONF['POOL'] must be a dict, got 10.",
        "Write POOL as a dict, e.g. {'pool_size': 10}.",
    )


def test_poolconf_pool_bad_value_names_poolconf():
    problem = only_problem(pooled(), poolconf={"POOL": {"pool_size": 0}})

    assert problem == Problem(
        "E004",
        "POOLCONF['POOL']['pool_size'] must be an integer from 1 to 10000, got 0.",
        "For example: pool_size=10.",
    )


def test_poolconf_pool_unknown_key_is_e002():
    problem = only_problem(pooled(), poolconf={"POOL": {"pool_szie": 3}})

    assert problem == Problem(
        "E002",
        "POOLCONF['POOL'] has an unknown key 'pool_szie'.",
        f"Did you mean 'pool_size'? {VALID_KEYS}",
    )


def test_poolconf_problems_come_before_alias_problems():
    _, problems = validate(with_pool(pool_size=0), poolconf={"PRESET": "nope"})

    assert ids(problems) == ["E008", "E004"]


def test_poolconf_read_from_settings_when_not_given():
    with override_settings(POOLCONF={"PRESET": "high_traffic"}):
        result, problems = validate_alias("default", pooled())

    assert problems == []
    assert (result.pool_size, result.max_overflow) == (20, 30)


def test_bad_poolconf_setting_is_reported_when_not_given():
    with override_settings(POOLCONF={"PRESET": "nope"}):
        _, problems = validate_alias("default", pooled())

    assert ids(problems) == ["E008"]


def test_unset_poolconf_setting_means_defaults():
    with override_settings(POOLCONF=None):
        result, problems = validate_alias("default", pooled())

    assert problems == []
    assert result == PoolSettings(alias="default")


# Precedence: defaults < PRESET < POOLCONF["POOL"] < DATABASES[alias]["POOL"]


@pytest.mark.parametrize(
    ("preset", "pool_size", "max_overflow"),
    [
        ("development", 5, 5),
        ("small_api", 10, 10),
        ("high_traffic", 20, 30),
        ("background_worker", 5, 5),
    ],
)
def test_preset_sets_pool_size_and_max_overflow(preset, pool_size, max_overflow):
    result = pool_settings("default", pooled(), poolconf={"PRESET": preset})

    assert (result.pool_size, result.max_overflow) == (pool_size, max_overflow)


def test_preset_leaves_other_defaults_alone():
    result = pool_settings("default", pooled(), poolconf={"PRESET": "high_traffic"})

    assert result == PoolSettings(alias="default", pool_size=20, max_overflow=30)


def test_poolconf_pool_overrides_preset():
    result = pool_settings(
        "default",
        pooled(),
        poolconf={"PRESET": "small_api", "POOL": {"pool_size": 15}},
    )

    assert (result.pool_size, result.max_overflow) == (15, 10)


def test_poolconf_pool_overrides_defaults():
    result = pool_settings(
        "default",
        pooled(),
        poolconf={"POOL": {"pool_timeout": 4, "pool_recycle": None}},
    )

    assert result.pool_timeout == 4.0
    assert type(result.pool_timeout) is float
    assert result.pool_recycle is None
    assert result.pool_size == 5


def test_alias_pool_overrides_poolconf_pool_and_preset():
    result = pool_settings(
        "default",
        with_pool(pool_size=3, pool_timeout=1),
        poolconf={
            "PRESET": "high_traffic",
            "POOL": {"pool_size": 15, "pool_timeout": 4, "connect_timeout": 2},
        },
    )

    assert result == PoolSettings(
        alias="default",
        pool_size=3,  # alias POOL
        max_overflow=30,  # preset
        pool_timeout=1.0,  # alias POOL over POOLCONF["POOL"]
        connect_timeout=2.0,  # POOLCONF["POOL"]
    )


def test_alias_pool_overrides_preset():
    result = pool_settings(
        "default", with_pool(max_overflow=0), poolconf={"PRESET": "small_api"}
    )

    assert (result.pool_size, result.max_overflow) == (10, 0)


def test_alias_pool_none_overrides_poolconf_recycle():
    result = pool_settings(
        "default", with_pool(pool_recycle=None), poolconf={"POOL": {"pool_recycle": 60}}
    )

    assert result.pool_recycle is None


def test_auto_preset_in_production_uses_usable_cores(monkeypatch):
    monkeypatch.setenv("ENV", "production")
    size = len(os.sched_getaffinity(0)) * 2 + 4

    result = pool_settings("default", pooled(), poolconf={"PRESET": "auto"})

    assert (result.pool_size, result.max_overflow) == (size, size)


def test_auto_preset_outside_production_is_small(monkeypatch):
    monkeypatch.setenv("ENV", "staging")

    result = pool_settings("default", pooled(), poolconf={"PRESET": "auto"})

    assert (result.pool_size, result.max_overflow) == (5, 5)


def test_auto_preset_without_env_is_small(monkeypatch):
    monkeypatch.delenv("ENV", raising=False)

    result = pool_settings("default", pooled(), poolconf={"PRESET": "auto"})

    assert (result.pool_size, result.max_overflow) == (5, 5)


def test_alias_pool_overrides_auto_preset(monkeypatch):
    monkeypatch.setenv("ENV", "production")

    result = pool_settings(
        "default", with_pool(pool_size=2), poolconf={"PRESET": "auto"}
    )

    assert result.pool_size == 2


# Non-pooled engines: W001


def test_pool_on_non_pooled_engine_is_w001():
    settings_dict = {
        "ENGINE": "django.db.backends.postgresql",
        "POOL": {"pool_size": 3},
    }

    result, problems = validate(settings_dict, alias="legacy")

    assert result is None
    assert problems == [
        Problem(
            "W001",
            "DATABASES['legacy'] has a 'POOL' but its ENGINE "
            "'django.db.backends.postgresql' is not a django-poolconf backend, so the "
            "pool options are ignored.",
            "Set ENGINE to 'django_poolconf.backends.postgresql'.",
        )
    ]
    assert not problems[0].is_error


def test_non_pooled_engine_pool_is_not_validated():
    settings_dict = {"ENGINE": "django.db.backends.sqlite3", "POOL": {"pool_szie": "x"}}

    assert ids(validate(settings_dict)[1]) == ["W001"]


def test_non_pooled_engine_without_pool_has_no_problems():
    settings_dict = {"ENGINE": "django.db.backends.sqlite3", "CONN_MAX_AGE": 60}

    assert validate(settings_dict) == (None, [])


def test_non_pooled_engine_ignores_bad_poolconf():
    settings_dict = {"ENGINE": "django.db.backends.sqlite3"}

    assert validate(settings_dict, poolconf={"PRESET": "nope"}) == (None, [])


def test_pool_settings_rejects_non_pooled_engine():
    message = (
        "DATABASES['legacy'] does not use a django-poolconf backend, so it has no pool "
        "settings. Set its ENGINE to 'django_poolconf.backends.postgresql'."
    )
    with pytest.raises(ImproperlyConfigured, match=whole(message)):
        pool_settings("legacy", {"ENGINE": "django.db.backends.sqlite3"}, poolconf={})


# pool_settings()


def test_pool_settings_raises_first_error_as_str_of_problem():
    settings_dict = pooled(POOL={"pool_szie": 3, "pool_size": 0}, CONN_MAX_AGE=60)
    _, problems = validate(settings_dict)
    assert ids(problems) == ["E002", "E004", "W007"]

    with pytest.raises(ImproperlyConfigured) as excinfo:
        pool_settings("default", settings_dict, poolconf={})

    assert excinfo.value.args == (str(problems[0]),)
    assert str(excinfo.value) == f"{problems[0].msg} {problems[0].hint}"


def test_pool_settings_returns_validated_settings():
    assert pool_settings(
        "default", with_pool(pool_size=9), poolconf={}
    ) == PoolSettings(alias="default", pool_size=9)


def test_validate_alias_returns_no_settings_on_error():
    result, problems = validate(with_pool(pool_size=0))

    assert result is None
    assert ids(problems) == ["E004"]


def test_slow_checkout_ms_is_milliseconds_and_leak_threshold_seconds():
    problems = validate_alias(
        "default",
        {
            "ENGINE": ENGINE,
            "POOL": {"slow_checkout_ms": "5", "leak_detection_threshold": 0},
        },
    )[1]
    text = " ".join(str(p) for p in problems)
    assert "['slow_checkout_ms'] must be a number of milliseconds or None" in text
    assert (
        "['leak_detection_threshold'] must be a number from 0.001 to 31536000 (seconds) or None"
        in text
    )


# HOST: E017


@pytest.mark.parametrize(
    "host",
    [
        "postgres://app:s3cret@db/app",
        "postgresql://db.example.com:5432/app",
        "app:s3cret@db",
        "db1,postgres://app:s3cret@db2/app",
    ],
)
def test_a_url_in_host_is_e017_and_not_shown(host):
    problem = only_problem(pooled(HOST=host))

    assert problem == Problem(
        "E017",
        "DATABASES['default']['HOST'] is a database URL, not a host name.",
        hint="Set HOST to the server's name or address alone, or build DATABASES "
        "from the URL with django_poolconf.databases_from_env() (or "
        "database_from_url()), which fills NAME, USER, PASSWORD, HOST and PORT from "
        "it.",
    )
    assert "s3cret" not in str(problem)


@pytest.mark.parametrize(
    "host",
    ["db", "10.0.0.5", "::1", "db1,db2", "/var/run/postgresql", "@abstract", ""],
)
def test_host_names_addresses_and_sockets_are_accepted(host):
    result, problems = validate(pooled(HOST=host))

    assert problems == []
    assert result is not None


def test_multi_host_with_ports_and_target_session_attrs_is_accepted():
    # libpq's failover setting: HOST and PORT as lists, the primary found by role.
    settings_dict = pooled(
        HOST="db1.internal,db2.internal",
        PORT="5432,5433",
        OPTIONS={"target_session_attrs": "read-write"},
    )

    result, problems = validate(settings_dict)

    assert problems == []
    assert result is not None


# max_waiting and connect_params


def test_max_waiting_defaults_to_0_unbounded():
    assert pool_settings("default", pooled(), poolconf={}).max_waiting == 0


def test_negative_max_waiting_is_e004():
    problem = only_problem(with_pool(max_waiting=-1))

    assert problem.id == "E004"
    assert problem.msg == (
        "DATABASES['default']['POOL']['max_waiting'] must be an integer from 0 to "
        "1000000, got -1."
    )


def test_connect_params_must_be_a_dotted_path():
    problem = only_problem(with_pool(connect_params=print))

    assert problem.id == "E003"
    assert problem.msg.startswith(
        "DATABASES['default']['POOL']['connect_params'] must be a dotted path to a "
        "callable or None, got <built-in function print> (builtin_function_or_method)."
    )


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("tests.backends.no_such_module.params", "ModuleNotFoundError"),
        ("tests.backends.test_credentials.no_such_name", "ImportError"),
        ("noperiod", "ImportError"),
    ],
)
def test_connect_params_that_cannot_be_imported_is_e018(path, why):
    problem = only_problem(with_pool(connect_params=path))

    assert problem.id == "E018"
    assert problem.msg == (
        f"DATABASES['default']['POOL']['connect_params'] {path!r} cannot be "
        f"imported ({why})."
    )
    assert problem.hint == (
        "Name a function (alias, params) -> params, e.g. 'myproject.db.connect_params'."
    )


def test_connect_params_that_is_not_callable_is_e018():
    problem = only_problem(
        with_pool(connect_params="tests.backends.test_credentials.NOT_CALLABLE")
    )

    assert problem.id == "E018"
    assert problem.msg == (
        "DATABASES['default']['POOL']['connect_params'] "
        "'tests.backends.test_credentials.NOT_CALLABLE' is not callable (str)."
    )
