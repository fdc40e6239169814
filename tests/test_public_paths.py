"""The modules kept for compatibility re-export the objects of their new homes."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    ("old", "new", "names"),
    [
        (
            "django_poolconf.monitoring",
            "django_poolconf.stats",
            ["BUCKETS", "Counters", "PoolStats", "snapshot"],
        ),
        (
            "django_poolconf.monitoring",
            "django_poolconf.signals",
            ["Invalidation", "connection_invalidated", "pool_exhausted", "send"],
        ),
        ("django_poolconf.monitoring", "django_poolconf.leaks", ["LEAKS", "Held"]),
        (
            "django_poolconf.routers",
            "django_poolconf.routing.router",
            ["ReadWriteRouter", "note_write"],
        ),
        (
            "django_poolconf.routers",
            "django_poolconf.routing.scope",
            ["Pin", "routing_scope", "use_primary", "use_replica"],
        ),
        (
            "django_poolconf.middleware",
            "django_poolconf.routing.middleware",
            ["ReadWriteMiddleware", "SIGNING_SALT"],
        ),
        (
            "django_poolconf.replicas",
            "django_poolconf.routing.replicas",
            ["ReplicaState", "replica_states", "reset", "record_failure"],
        ),
        (
            "django_poolconf.probes",
            "django_poolconf.backends.postgresql.probes",
            ["probe_pooled", "probe_server"],
        ),
        (
            "django_poolconf.capacity",
            "django_poolconf.health.capacity",
            ["ServerCapacity", "deployment_problems", "plan_capacity"],
        ),
        (
            "django_poolconf.health",
            "django_poolconf.health.report",
            ["AliasHealth", "HealthReport", "Target", "STATS_KEYS"],
        ),
        (
            "django_poolconf.health",
            "django_poolconf.health.runner",
            ["check_health", "pooled_aliases"],
        ),
    ],
)
def test_old_path_gives_the_object_of_its_new_home(old, new, names):
    before, after = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(before, name) is getattr(after, name), name


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("drain", "django_poolconf.pool.registry"),
        ("TooManyRequests", "django_poolconf.errors"),
        ("PoolTimeout", "django_poolconf.errors"),
        ("dispose_all", "django_poolconf.pool.registry"),
    ],
)
def test_the_package_exports_each_public_name_from_its_home(name, home):
    import django_poolconf

    assert name in django_poolconf.__all__
    assert getattr(django_poolconf, name) is getattr(
        importlib.import_module(home), name
    )
