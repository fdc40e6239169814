"""System checks over the pool configuration. They read settings; no database needed."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connections
from django.test import override_settings

from django_poolconf.checks import check_pool_settings
from django_poolconf.conf import validate_alias

ENGINE = "django_poolconf.backends.postgresql"


def alias_settings(**extra):
    """One alias as Django's ConnectionHandler fills it in, plus ``extra``."""
    return {
        "ENGINE": ENGINE,
        "NAME": "app",
        "USER": "",
        "PASSWORD": "",
        "HOST": "127.0.0.1",
        "PORT": "1",
        "ATOMIC_REQUESTS": False,
        "AUTOCOMMIT": True,
        "CONN_MAX_AGE": 0,
        "CONN_HEALTH_CHECKS": False,
        "OPTIONS": {},
        "TIME_ZONE": None,
        "TEST": {
            "CHARSET": None,
            "COLLATION": None,
            "MIGRATE": True,
            "MIRROR": None,
            "NAME": None,
        },
        **extra,
    }


@pytest.fixture
def databases(monkeypatch):
    """Replace ``connections.settings`` (what the checks read) for one test."""

    def use(**aliases):
        monkeypatch.setitem(connections.__dict__, "settings", aliases)
        return aliases

    return use


@pytest.fixture(autouse=True)
def no_poolconf():
    with override_settings(POOLCONF=None):
        yield


def good_databases():
    return {
        "default": alias_settings(POOL={"pool_size": 2}),
        "replica": alias_settings(REPLICA_OF="default"),
    }


def ids(messages):
    return [message.id for message in messages]


def test_good_configuration_has_no_messages(databases):
    databases(**good_databases())

    assert check_pool_settings() == []


def test_check_reads_connections_settings(databases):
    databases(default=alias_settings(CONN_MAX_AGE=60))

    assert ids(check_pool_settings()) == ["django_poolconf.W007"]


def test_several_problems_are_all_reported(databases):
    databases(default=alias_settings(POOL={"pool_szie": 3}, CONN_MAX_AGE=60))

    assert ids(check_pool_settings()) == [
        "django_poolconf.E002",
        "django_poolconf.W007",
    ]


def test_problems_of_every_alias_are_reported_in_order(databases):
    databases(
        default=alias_settings(POOL={"pool_size": 0}),
        replica=alias_settings(REPLICA_OF="primary", OPTIONS={"pool": True}),
        legacy=alias_settings(ENGINE="django.db.backends.sqlite3", POOL={}),
    )

    assert ids(check_pool_settings()) == [
        "django_poolconf.E004",
        "django_poolconf.W008",
        "django_poolconf.E009",
        "django_poolconf.W001",
    ]


def test_messages_carry_validator_text(databases):
    fake = databases(default=alias_settings(POOL={"pool_szie": 3}))
    _, problems = validate_alias("default", fake["default"], databases=fake)

    [message] = check_pool_settings()

    assert message == checks.Error(
        problems[0].msg, hint=problems[0].hint, id="django_poolconf.E002"
    )
    assert message.level == checks.ERROR


def test_unknown_key_suggests_closest_in_hint(databases):
    databases(default=alias_settings(POOL={"pool_szie": 3}))

    [message] = check_pool_settings()

    assert message.msg == "DATABASES['default']['POOL'] has an unknown key 'pool_szie'."
    assert message.hint.startswith("Did you mean 'pool_size'? ")


def test_replica_of_unknown_alias_is_e009(databases):
    databases(
        default=alias_settings(),
        replica=alias_settings(REPLICA_OF="defualt"),
    )

    [message] = check_pool_settings()

    assert message == checks.Error(
        "DATABASES['replica']['REPLICA_OF'] names 'defualt', which is not in DATABASES.",
        hint="Did you mean 'default'?",
        id="django_poolconf.E009",
    )


def test_replica_of_itself_is_e009(databases):
    databases(default=alias_settings(), replica=alias_settings(REPLICA_OF="replica"))

    assert ids(check_pool_settings()) == ["django_poolconf.E009"]


def test_pool_on_non_pooled_engine_is_warning(databases):
    databases(
        default=alias_settings(),
        legacy=alias_settings(ENGINE="django.db.backends.postgresql", POOL={}),
    )

    [message] = check_pool_settings()

    assert message == checks.Warning(
        "DATABASES['legacy'] has a 'POOL' but its ENGINE 'django.db.backends.postgresql' "
        "is not a django-poolconf backend, so the pool options are ignored.",
        hint="Set ENGINE to 'django_poolconf.backends.postgresql'.",
        id="django_poolconf.W001",
    )
    assert message.level == checks.WARNING


def test_non_pooled_engine_without_pool_is_ignored(databases):
    databases(
        legacy=alias_settings(ENGINE="django.db.backends.sqlite3", CONN_MAX_AGE=60)
    )

    assert check_pool_settings() == []


def test_poolconf_problem_is_reported_once_for_two_pooled_aliases(databases):
    databases(**good_databases())

    with override_settings(POOLCONF={"PRESET": "smal_api"}):
        messages = check_pool_settings()

    assert ids(messages) == ["django_poolconf.E008"]
    assert messages[0].hint == "Did you mean 'small_api'?"


def test_every_poolconf_problem_is_reported_once(databases):
    databases(**good_databases())

    with override_settings(
        POOLCONF={"PRESETS": "x", "PRESET": "nope", "POOL": {"pool_size": "5"}}
    ):
        messages = check_pool_settings()

    assert ids(messages) == [
        "django_poolconf.E007",
        "django_poolconf.E008",
        "django_poolconf.E003",
    ]


def test_poolconf_not_a_dict_is_reported_once(databases):
    databases(**good_databases())

    with override_settings(POOLCONF=["small_api"]):
        assert ids(check_pool_settings()) == ["django_poolconf.E007"]


def test_poolconf_problems_come_before_alias_problems(databases):
    databases(
        default=alias_settings(),
        replica=alias_settings(REPLICA_OF="primary"),
    )

    with override_settings(POOLCONF={"PRESETS": "small_api"}):
        assert ids(check_pool_settings()) == [
            "django_poolconf.E007",
            "django_poolconf.E009",
        ]


def test_good_poolconf_has_no_messages(databases):
    databases(**good_databases())

    with override_settings(
        POOLCONF={"PRESET": "small_api", "POOL": {"pool_timeout": 5}}
    ):
        assert check_pool_settings() == []


def test_same_problem_on_two_aliases_is_reported_for_each(databases):
    databases(
        default=alias_settings(CONN_MAX_AGE=60),
        replica=alias_settings(REPLICA_OF="default", CONN_MAX_AGE=60),
    )

    messages = check_pool_settings()

    assert ids(messages) == ["django_poolconf.W007", "django_poolconf.W007"]
    assert [m.msg.split(" is ")[0] for m in messages] == [
        "DATABASES['default']['CONN_MAX_AGE']",
        "DATABASES['replica']['CONN_MAX_AGE']",
    ]


def test_check_command_raises_on_error(databases):
    databases(default=alias_settings(POOL={"pool_size": 0}))

    with pytest.raises(SystemCheckError, match=r"django_poolconf\.E004"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


def test_check_command_raises_on_poolconf_error(databases):
    databases(**good_databases())

    with (
        override_settings(POOLCONF={"PRESET": "nope"}),
        pytest.raises(SystemCheckError, match=r"django_poolconf\.E008"),
    ):
        call_command("check", stdout=StringIO(), stderr=StringIO())


def test_check_command_passes_good_configuration(databases):
    databases(**good_databases())
    stdout = StringIO()

    call_command("check", stdout=stdout, stderr=StringIO())

    assert "django_poolconf" not in stdout.getvalue()


def test_check_command_prints_warning_without_failing(databases):
    databases(
        default=alias_settings(),
        legacy=alias_settings(ENGINE="django.db.backends.sqlite3", POOL={}),
    )
    stderr = StringIO()

    call_command("check", stdout=StringIO(), stderr=stderr)

    assert "django_poolconf.W001" in stderr.getvalue()


def test_check_command_honours_silenced_ids(databases):
    databases(default=alias_settings(POOL={"pool_size": 0}))

    with override_settings(SILENCED_SYSTEM_CHECKS=["django_poolconf.E004"]):
        call_command("check", stdout=StringIO(), stderr=StringIO())


def test_poolconf_is_checked_without_any_pooled_alias(monkeypatch, settings):
    from django.db import connections

    from django_poolconf.checks import check_pool_settings

    monkeypatch.setitem(
        connections.__dict__,
        "settings",
        {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    )
    settings.POOLCONF = {"PRESET": "huge"}

    assert [m.id for m in check_pool_settings()] == ["django_poolconf.E008"]


def test_connect_timeout_in_options_and_pool_warns(monkeypatch):
    from django.db import connections

    from django_poolconf.checks import check_pool_settings

    monkeypatch.setitem(
        connections.__dict__,
        "settings",
        {
            "default": {
                "ENGINE": "django_poolconf.backends.postgresql",
                "NAME": "app",
                "CONN_MAX_AGE": 0,
                "OPTIONS": {"connect_timeout": 3},
                "POOL": {"connect_timeout": 5},
            }
        },
    )

    messages = check_pool_settings()
    assert [m.id for m in messages] == ["django_poolconf.W002"]
    assert messages[0].msg == (
        "DATABASES['default']['OPTIONS']['connect_timeout'] overrides "
        "DATABASES['default']['POOL']['connect_timeout']."
    )


# The router's topology and settings: E010 to E015, W003


def test_replica_of_a_replica_is_e010(databases):
    databases(
        default=alias_settings(),
        replica=alias_settings(REPLICA_OF="default"),
        cascade=alias_settings(REPLICA_OF="replica"),
    )

    [message] = check_pool_settings()

    assert message == checks.Error(
        "DATABASES['cascade']['REPLICA_OF'] names 'replica', which is itself a replica.",
        hint="Name the primary that takes the writes: REPLICA_OF = 'default'.",
        id="django_poolconf.E010",
    )


def test_replica_on_another_vendor_is_e011(databases):
    databases(
        default=alias_settings(ENGINE="django.db.backends.mysql"),
        replica=alias_settings(REPLICA_OF="default"),
    )

    assert ids(check_pool_settings()) == ["django_poolconf.E011"]


def test_each_bad_topology_is_reported_with_its_id(databases):
    databases(
        default=alias_settings(),
        replica=alias_settings(REPLICA_OF="default"),
        unknown=alias_settings(REPLICA_OF="defualt"),
        cascade=alias_settings(REPLICA_OF="replica"),
        legacy=alias_settings(ENGINE="django.db.backends.sqlite3"),
        other_vendor=alias_settings(REPLICA_OF="legacy"),
    )

    assert ids(check_pool_settings()) == [
        "django_poolconf.E009",
        "django_poolconf.E010",
        "django_poolconf.E011",
    ]


@pytest.mark.parametrize(
    ("router", "expected"),
    [
        ("fast", ["django_poolconf.E012"]),
        ({"PIN_SECOND": 5}, ["django_poolconf.E012"]),
        ({"PIN_SECONDS": "5"}, ["django_poolconf.E013"]),
        ({"BALANCE": "random"}, ["django_poolconf.E013"]),
        ({"APPS": {"testapp": "replica"}}, ["django_poolconf.E014"]),
        ({"APPS": {"nope": "default"}}, ["django_poolconf.E014"]),
        ({"CAUSAL": True}, ["django_poolconf.E015"]),
    ],
)
def test_router_settings_problems_have_their_ids(databases, router, expected):
    databases(**good_databases())

    with override_settings(POOLCONF={"ROUTER": router}):
        assert ids(check_pool_settings()) == expected


def test_pin_without_the_middleware_is_w003(databases):
    databases(**good_databases())

    with override_settings(POOLCONF={"ROUTER": {"PIN_SECONDS": 5}}, MIDDLEWARE=[]):
        [message] = check_pool_settings()

    assert message.id == "django_poolconf.W003"
    assert message.level == checks.WARNING


@pytest.mark.parametrize(
    "middleware",
    [
        "django_poolconf.middleware.ReadWriteMiddleware",
        "tests.test_checks.PinningMiddleware",
    ],
)
def test_pin_with_the_middleware_or_a_subclass_has_no_warning(databases, middleware):
    databases(**good_databases())

    with override_settings(
        POOLCONF={"ROUTER": {"PIN_SECONDS": 5}},
        MIDDLEWARE=["django.middleware.common.CommonMiddleware", middleware],
    ):
        assert check_pool_settings() == []


def test_check_command_raises_on_bad_topology(databases):
    databases(
        default=alias_settings(),
        replica=alias_settings(REPLICA_OF="default"),
        cascade=alias_settings(REPLICA_OF="replica"),
    )

    with pytest.raises(SystemCheckError, match=r"django_poolconf\.E010"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


def _pinning_middleware():
    from django_poolconf.middleware import ReadWriteMiddleware

    class PinningMiddleware(ReadWriteMiddleware):
        pass

    PinningMiddleware.__module__ = __name__
    return PinningMiddleware


PinningMiddleware = _pinning_middleware()


def test_bad_health_option_is_e010(settings):
    from django_poolconf.checks import check_pool_settings

    settings.POOLCONF = {"HEALTH": {"TIMEOUT": 0, "DETAIL": "all"}}

    assert [m.id for m in check_pool_settings()] == ["django_poolconf.E016"] * 2


def test_deployment_check_runs_with_deploy_only():
    from django_poolconf.checks import check_deployment

    assert check_deployment in checks.registry.registry.get_checks(
        include_deployment_checks=True
    )
    assert check_deployment not in checks.registry.registry.get_checks()


@pytest.mark.parametrize("value", [0, "0", -1])
def test_connect_timeout_turned_off_in_options_warns_on_deploy(databases, value):
    from django_poolconf.checks import check_deployment

    databases(default=alias_settings(OPTIONS={"connect_timeout": value}))

    [message] = check_deployment()  # settings only: no --database, no connection

    assert message.id == "django_poolconf.W005"
    assert message.level == checks.WARNING
    assert message.msg == (
        f"DATABASES['default']['OPTIONS']['connect_timeout'] is {value!r}, which makes "
        "libpq wait for a server that does not answer as long as the operating system "
        "lets it (minutes)."
    )


@pytest.mark.parametrize("value", [3, "10"])
def test_connect_timeout_in_options_is_fine_on_deploy(databases, value):
    from django_poolconf.checks import check_deployment

    databases(default=alias_settings(OPTIONS={"connect_timeout": value}))

    assert check_deployment() == []
