"""conf/__init__: the public paths of the settings code, re-exported from their modules."""

from __future__ import annotations

import importlib

import pytest

from django_poolconf import conf

#: Every name ``from django_poolconf.conf import ...`` gave before the split, by owner.
OWNERS = {
    "rules": ["POOLED_ENGINE_PREFIX", "Problem", "Rule", "get_poolconf", "is_pooled"],
    "pool": [
        "POOLCONF_KEYS",
        "POOL_KEYS",
        "RESET_CHOICES",
        "PoolSettings",
        "ResetOnReturn",
        "pool_settings",
        "validate_alias",
        "validate_poolconf",
    ],
    "replicas": ["Topology", "mirror_replicas_in_tests", "topology"],
    "router": [
        "BALANCE_CHOICES",
        "MIDDLEWARE_PATH",
        "ROUTER_KEYS",
        "ROUTER_PATH",
        "Balance",
        "RouterSettings",
        "router_settings",
        "validate_router",
    ],
    "health": [
        "DETAIL_CHOICES",
        "HEALTH_KEYS",
        "WORKERS_ENV",
        "Detail",
        "HealthSettings",
        "health_settings",
    ],
}


@pytest.mark.parametrize(
    ("module", "name"), [(m, n) for m, names in OWNERS.items() for n in names]
)
def test_each_name_is_its_owners_object(module, name):
    owner = importlib.import_module(f"django_poolconf.conf.{module}")

    assert getattr(conf, name) is getattr(owner, name)
    assert name in owner.__all__


def test_all_lists_exactly_the_re_exported_names():
    assert sorted(conf.__all__) == sorted(n for names in OWNERS.values() for n in names)
