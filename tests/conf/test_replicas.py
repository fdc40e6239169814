"""conf.replicas: REPLICA_OF, the topology and the test mirrors. No database needed."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_poolconf.conf.pool import pool_settings
from django_poolconf.conf.replicas import mirror_replicas_in_tests, topology
from django_poolconf.conf.rules import Problem
from tests.conf.conftest import only_problem, pooled, validate, whole

# REPLICA_OF: E009


def test_replica_of_is_read():
    databases = {"default": pooled(), "replica": pooled(REPLICA_OF="default")}

    result = pool_settings(
        "replica", databases["replica"], databases=databases, poolconf={}
    )

    assert result.replica_of == "default"


def test_replica_of_defaults_to_none():
    assert pool_settings("default", pooled(), poolconf={}).replica_of is None


def test_replica_of_unknown_alias_suggests_closest():
    databases = {"default": pooled(), "replica": pooled(REPLICA_OF="defualt")}
    message = (
        "DATABASES['replica']['REPLICA_OF'] names 'defualt', which is not in DATABASES. "
        "Did you mean 'default'?"
    )

    problem = only_problem(databases["replica"], alias="replica", databases=databases)

    assert problem.id == "E009"
    with pytest.raises(ImproperlyConfigured, match=whole(message)):
        pool_settings("replica", databases["replica"], databases=databases, poolconf={})


def test_replica_of_unknown_alias_without_near_match_says_what_to_set():
    databases = {"default": pooled(), "replica": pooled(REPLICA_OF="zzz")}

    problem = only_problem(databases["replica"], alias="replica", databases=databases)

    assert problem == Problem(
        "E009",
        "DATABASES['replica']['REPLICA_OF'] names 'zzz', which is not in DATABASES.",
        "Set REPLICA_OF to the alias of the primary.",
    )


def test_replica_of_unknown_alias_is_not_checked_without_databases():
    result, problems = validate(pooled(REPLICA_OF="elsewhere"), alias="replica")

    assert problems == []
    assert result.replica_of == "elsewhere"


@pytest.mark.parametrize(("replica_of", "shown"), [("replica", "'replica'"), (1, "1")])
def test_replica_of_itself_or_not_a_string_is_e009(replica_of, shown):
    databases = {"default": pooled(), "replica": pooled(REPLICA_OF=replica_of)}
    message = (
        f"DATABASES['replica']['REPLICA_OF'] must name another database alias, got "
        f"{shown}. Set REPLICA_OF to the alias of the primary, e.g. 'default'."
    )

    problem = only_problem(databases["replica"], alias="replica", databases=databases)

    assert problem.id == "E009"
    with pytest.raises(ImproperlyConfigured, match=whole(message)):
        pool_settings("replica", databases["replica"], databases=databases, poolconf={})


# REPLICA_OF: E010 (a replica of a replica) and E011 (another vendor)


def test_replica_of_a_replica_names_the_primary_to_use():
    databases = {
        "default": pooled(),
        "replica": pooled(REPLICA_OF="default"),
        "cascade": pooled(REPLICA_OF="replica"),
    }
    message = (
        "DATABASES['cascade']['REPLICA_OF'] names 'replica', which is itself a replica. "
        "Name the primary that takes the writes: REPLICA_OF = 'default'."
    )

    problem = only_problem(databases["cascade"], alias="cascade", databases=databases)

    assert problem.id == "E010"
    with pytest.raises(ImproperlyConfigured, match=whole(message)):
        pool_settings("cascade", databases["cascade"], databases=databases, poolconf={})


def test_replicas_of_each_other_have_no_primary_to_suggest():
    databases = {"a": pooled(REPLICA_OF="b"), "b": pooled(REPLICA_OF="a")}

    problem = only_problem(databases["a"], alias="a", databases=databases)

    assert problem == Problem(
        "E010",
        "DATABASES['a']['REPLICA_OF'] names 'b', which is itself a replica.",
        "Name the primary that takes the writes.",
    )


def test_replica_on_another_vendor_is_e011():
    databases = {
        "default": {"ENGINE": "django.db.backends.mysql"},
        "replica": pooled(REPLICA_OF="default"),
    }

    problem = only_problem(databases["replica"], alias="replica", databases=databases)

    assert problem == Problem(
        "E011",
        "DATABASES['replica'] is a replica of 'default', but its ENGINE "
        "'django_poolconf.backends.postgresql' is for another database than "
        "'django.db.backends.mysql'.",
        "A replica runs the same database as its primary: fix ENGINE, or remove "
        "REPLICA_OF.",
    )


@pytest.mark.parametrize(
    "primary_engine",
    [
        "django.db.backends.postgresql",
        "django.contrib.gis.db.backends.postgis",
        "django_poolconf.backends.postgresql",
    ],
)
def test_replica_of_a_postgresql_primary_on_any_postgresql_backend(primary_engine):
    databases = {
        "default": {"ENGINE": primary_engine},
        "replica": pooled(REPLICA_OF="default"),
    }

    assert validate(databases["replica"], alias="replica", databases=databases)[1] == []


def test_replica_of_a_primary_on_a_backend_named_otherwise_is_known_by_its_vendor():
    databases = {
        "default": {"ENGINE": "tests.renamed_backend"},
        "replica": pooled(REPLICA_OF="default"),
    }

    assert validate(databases["replica"], alias="replica", databases=databases)[1] == []


# The topology


def test_topology_lists_each_primarys_replicas_in_order():
    databases = {
        "default": pooled(),
        "replica2": pooled(REPLICA_OF="default"),
        "analytics": pooled(),
        "replica1": pooled(REPLICA_OF="default"),
        "analytics_replica": pooled(REPLICA_OF="analytics"),
        "legacy": {"ENGINE": "django.db.backends.postgresql", "REPLICA_OF": "default"},
    }

    found = topology(databases)

    assert dict(found.replicas) == {
        "default": ("replica2", "replica1"),
        "analytics": ("analytics_replica",),
    }
    assert dict(found.primary_of) == {
        "replica2": "default",
        "replica1": "default",
        "analytics_replica": "analytics",
    }


def test_topology_raises_on_a_bad_replica_of():
    databases = {
        "default": pooled(),
        "replica": pooled(REPLICA_OF="default"),
        "cascade": pooled(REPLICA_OF="replica"),
    }

    with pytest.raises(ImproperlyConfigured, match=r"\['cascade'\].*itself a replica"):
        topology(databases)


def test_replicas_mirror_their_primary_in_tests_unless_set():
    databases = {
        "default": pooled(),
        "replica1": pooled(REPLICA_OF="default"),
        "replica2": pooled(REPLICA_OF="default", TEST={"MIRROR": None}),
        "replica3": pooled(REPLICA_OF="default", TEST={"MIRROR": "other"}),
        "legacy": {"ENGINE": "django.db.backends.sqlite3", "REPLICA_OF": "default"},
        "broken": pooled(REPLICA_OF="nowhere"),
    }

    changed = mirror_replicas_in_tests(databases)

    assert changed == ["replica1", "replica2"]
    assert databases["replica1"]["TEST"] == {"MIRROR": "default"}
    assert databases["replica2"]["TEST"] == {"MIRROR": "default"}
    assert databases["replica3"]["TEST"] == {"MIRROR": "other"}
    assert "TEST" not in databases["legacy"]
    assert "TEST" not in databases["broken"]
    assert "TEST" not in databases["default"]


def test_app_ready_makes_the_test_replicas_mirrors():
    from django.conf import settings

    assert settings.DATABASES["replica"]["TEST"]["MIRROR"] == "default"
