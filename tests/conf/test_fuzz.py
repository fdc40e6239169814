"""Every settings key fed random values: accepted as given and within its documented
range, or rejected with a message that names the key and the range. Never another
exception, never a value read as something else. Pure: no database.

The ranges below are the documented ones (docs/configuration.rst, routing.rst,
health.rst), written out again here on purpose: a change of a range in the code must
change this table too. That accepted values *work* at run time is shown against the
real servers at both ends of each range in tests/test_settings_bounds.py.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from django_poolconf.conf.health import validate_health
from django_poolconf.conf.pool import validate_alias, validate_poolconf
from django_poolconf.conf.router import validate_router
from tests.conf.conftest import pooled

#: Deterministic in CI (the same examples on every run) and a few seconds at most.
FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

YEAR = 31_536_000
DAY = 86_400
HOUR = 3_600


@dataclass(frozen=True)
class Int:
    low: int
    high: int
    optional: bool = False


@dataclass(frozen=True)
class Num:
    low: float
    high: float
    optional: bool = False


@dataclass(frozen=True)
class Other:
    """A boolean, a choice, a name or a dict: checked by the accepted values' own test."""


POOL_RANGES = {
    "pool_size": Int(1, 10_000),
    "max_overflow": Int(0, 10_000),
    "pool_timeout": Num(0.001, HOUR),
    "pool_recycle": Num(0.001, YEAR, optional=True),
    "pool_pre_ping": Other(),
    "pre_ping_threshold": Num(0, DAY),
    "validation_timeout": Num(0.001, HOUR),
    "connect_timeout": Num(0.001, HOUR),
    "statement_timeout": Int(0, 2_147_483_647, optional=True),
    "read_timeout": Num(1, DAY, optional=True),
    "reset_on_return": Other(),
    "thread_affinity": Other(),
    "leak_detection_threshold": Num(0.001, YEAR, optional=True),
    "slow_checkout_ms": Num(0, 3_600_000, optional=True),
    "max_waiting": Int(0, 1_000_000),
    "connect_params": Other(),
    "checkout_scope": Other(),
    "pgbouncer": Other(),
    "pgbouncer_prepared_statements": Other(),
    "pgbouncer_admin": Other(),
}
ROUTER_RANGES = {
    "BALANCE": Other(),
    "PIN_SECONDS": Num(0.001, DAY, optional=True),
    "CAUSAL": Other(),
    "MAX_REPLICA_LAG": Num(0.001, DAY, optional=True),
    "CHECK_INTERVAL": Num(0.01, HOUR),
    "BACKOFF": Num(0.01, HOUR),
    "MAX_BACKOFF": Num(0.01, DAY),
    "APPS": Other(),
    "COOKIE_NAME": Other(),
    "HEADER_NAME": Other(),
}
HEALTH_RANGES = {
    "TIMEOUT": Num(0.001, HOUR),
    "CACHE": Num(0, DAY),
    "DETAIL": Other(),
    "TOKEN": Other(),
    "MAX_REPLICA_LAG": Num(0.001, DAY, optional=True),
    "WORKERS": Int(1, 10_000, optional=True),
    "HOSTS": Int(1, 10_000),
}

#: Values that broke a server, a checkout, a response or a health check once.
SPECIALS = [
    5e-324, -0.0, 0, 0.0, 1e-300, 0.0005, 2**31 - 1, 2**31, 2**63, 10**30, 10**400,
    3e6, 1e12, 1e300, math.nan, math.inf, -math.inf, True, False, None, "", " ", "5",
    "5.0", "nan", "Content-Length", "content-type", "Set-Cookie", "Transfer-Encoding",
    "X_Poolconf_Pin", "path", "Expires", "Max-Age", "sessionid", "csrftoken",
    "__Host-pin", "X-Poolconf-Pin", "poolconf_pin", "x" * 300, "round_robin",
    "token", "auto", "PIN", b"X-Pin", Decimal("5"), Fraction(1, 2), 5j, [5], {"a": 1},
    {"default": "default"}, {"app": 5}, (), object(),
]  # fmt: skip


def _values(rule):
    """Anything a settings file may hold, and the edges of ``rule``'s range."""
    edges = []
    if isinstance(rule, Int):
        edges = [rule.low, rule.high, rule.low - 1, rule.high + 1, float(rule.low)]
    elif isinstance(rule, Num):
        edges = [
            rule.low,
            rule.high,
            math.nextafter(rule.low, -math.inf),
            math.nextafter(rule.high, math.inf),
            int(rule.high),
        ]
    return st.one_of(
        st.sampled_from(SPECIALS + edges),
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        st.floats(min_value=-1e7, max_value=1e7),
        st.text(max_size=12),
        st.from_regex(r"[A-Za-z0-9_!#$%&'*+.^`|~-]{1,70}", fullmatch=True),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
    )


def _key_and_value(ranges):
    return st.sampled_from(sorted(ranges)).flatmap(
        lambda key: st.tuples(st.just(key), _values(ranges[key]))
    )


def _is_number(value):
    return isinstance(value, int | float) and not isinstance(value, bool)


def _show(bound):
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


def _assert_read_as_given(rule, value, read):
    """An accepted value is in its range, and read as exactly that value."""
    if isinstance(rule, Other):
        assert read == value
        return
    if value is None:
        assert rule.optional
        assert read is None
        return
    if isinstance(rule, Int):
        assert type(value) is int or isinstance(value, int)
        assert not isinstance(value, bool)
        assert rule.low <= value <= rule.high
        assert read == value
        assert type(read) is int
        return
    assert _is_number(value)
    assert math.isfinite(value)
    assert rule.low <= value <= rule.high
    assert type(read) is float
    assert read == float(value)


def _assert_rejected_clearly(rule, where, problems, value):
    """Every problem names the key; a number out of range gets the range itself."""
    assert problems
    for problem in problems:
        assert problem.msg.endswith("."), problem.msg
        assert re.match(r"\A\S.*", problem.msg)
    messages = " ".join(p.msg for p in problems)
    assert where in messages, messages
    typed = isinstance(rule, Num) or (isinstance(rule, Int) and isinstance(value, int))
    if typed and _is_number(value) and not _within(rule, value):
        assert f"from {_show(rule.low)} to {_show(rule.high)}" in messages


def _within(rule, value):
    try:
        return rule.low <= float(value) <= rule.high
    except OverflowError:
        return False


@FUZZ
@given(_key_and_value(POOL_RANGES))
@example(("statement_timeout", 2**31))
@example(("validation_timeout", 3e6))
@example(("pool_size", 10**30))
@example(("pool_timeout", 5e-324))
@example(("connect_timeout", 5e-324))
def test_every_pool_key_is_read_as_given_or_rejected_with_its_range(key_value):
    key, value = key_value
    rule = POOL_RANGES[key]
    result, problems = validate_alias("default", pooled(POOL={key: value}), poolconf={})

    if result is not None:
        assert problems == []
        _assert_read_as_given(rule, value, getattr(result, key))
    else:
        where = f"DATABASES['default']['POOL'][{key!r}]"
        _assert_rejected_clearly(rule, where, problems, value)


@FUZZ
@given(_key_and_value(POOL_RANGES))
@example(("statement_timeout", 2**31))
def test_every_project_pool_key_is_read_as_given_or_rejected_with_its_range(
    key_value,
):
    key, value = key_value
    rule = POOL_RANGES[key]
    poolconf = {"POOL": {key: value}}
    result, problems = validate_alias("default", pooled(), poolconf=poolconf)

    if result is not None:
        assert validate_poolconf(poolconf) == []
        _assert_read_as_given(rule, value, getattr(result, key))
    else:
        _assert_rejected_clearly(rule, f"POOLCONF['POOL'][{key!r}]", problems, value)


@FUZZ
@given(_values(Other()))
@example("auto")
@example("small_api")
def test_preset_is_a_known_name_or_rejected(value):
    problems = validate_poolconf({"PRESET": value})

    if problems:
        assert [p.id for p in problems] == ["E008"]
        assert problems[0].msg.startswith("POOLCONF['PRESET'] must be one of ")
    else:
        presets = {"development", "small_api", "high_traffic", "background_worker"}
        assert value is None or value in presets | {"auto"}


@FUZZ
@given(_key_and_value(ROUTER_RANGES))
@example(("PIN_SECONDS", 1e12))
@example(("PIN_SECONDS", 5e-324))
@example(("HEADER_NAME", "Content-Length"))
@example(("HEADER_NAME", "X_Poolconf_Pin"))
@example(("COOKIE_NAME", "path"))
@example(("COOKIE_NAME", "sessionid"))
@example(("CHECK_INTERVAL", 1e300))
@example(("BACKOFF", 5e-324))
def test_every_router_key_is_read_as_given_or_rejected_with_its_range(key_value):
    key, value = key_value
    rule = ROUTER_RANGES[key]
    result, problems = validate_router({"ROUTER": {key: value}})

    if result is not None:
        assert problems == []
        _assert_read_as_given(rule, value, getattr(result, key.lower()))
    else:
        where = f"POOLCONF['ROUTER'][{key!r}]"
        _assert_rejected_clearly(rule, where, problems, value)


@FUZZ
@given(_key_and_value(HEALTH_RANGES))
@example(("TIMEOUT", 3e6))
@example(("TIMEOUT", 5e-324))
@example(("HOSTS", 10**30))
def test_every_health_key_is_read_as_given_or_rejected_with_its_range(key_value):
    key, value = key_value
    rule = HEALTH_RANGES[key]
    result, problems = validate_health({"HEALTH": {key: value}})

    if result is not None:
        assert problems == []
        _assert_read_as_given(rule, value, getattr(result, key.lower()))
    else:
        where = f"POOLCONF['HEALTH'][{key!r}]"
        _assert_rejected_clearly(rule, where, problems, value)


@FUZZ
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(sorted(POOL_RANGES)), st.text(max_size=8)),
        _values(Num(0, 1)),
        max_size=4,
    )
)
def test_a_whole_random_pool_dict_is_validated_without_another_exception(pool):
    result, problems = validate_alias("default", pooled(POOL=pool), poolconf={})

    assert (result is None) == any(p.is_error for p in problems)
    for problem in problems:
        assert problem.msg.startswith("DATABASES['default']['POOL']")


def test_every_pool_key_is_fuzzed():
    # "a hypothesis test feeds random values to every POOL ... key" (issue 14): a key
    # added later must join POOL_RANGES.
    from django_poolconf.conf.pool import POOL_KEYS

    assert set(POOL_RANGES) == set(POOL_KEYS)
