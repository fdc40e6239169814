"""Read and validate django-poolconf's settings, by domain.

This is the only package that reads raw settings: ``DATABASES[alias]["POOL"]``,
``DATABASES[alias]["REPLICA_OF"]`` and the project-wide ``POOLCONF``. Everything
downstream takes a frozen :class:`PoolSettings`, :class:`RouterSettings`,
:class:`HealthSettings` or :class:`Topology`.

- :mod:`~django_poolconf.conf.rules`: :class:`Problem`, the value rules and their
  messages, :func:`get_poolconf` and :func:`is_pooled`, which every domain shares;
- :mod:`~django_poolconf.conf.replicas`: ``REPLICA_OF``, :func:`topology` and the
  test mirrors;
- :mod:`~django_poolconf.conf.router`: ``POOLCONF["ROUTER"]``;
- :mod:`~django_poolconf.conf.health`: ``POOLCONF["HEALTH"]``;
- :mod:`~django_poolconf.conf.pool`: each alias's ``POOL`` on top of the presets and
  ``POOLCONF["POOL"]``, and :func:`validate_poolconf`, the whole ``POOLCONF``.

Imports run one way: ``rules`` <- ``replicas``, ``router``, ``health`` <- ``pool``.
Import from here; the submodules are the package's own layout.
"""

from __future__ import annotations

from django_poolconf.conf.health import (
    DETAIL_CHOICES,
    HEALTH_KEYS,
    WORKERS_ENV,
    Detail,
    HealthSettings,
    health_settings,
)
from django_poolconf.conf.pool import (
    POOL_KEYS,
    POOLCONF_KEYS,
    RESET_CHOICES,
    PoolSettings,
    ResetOnReturn,
    pool_settings,
    validate_alias,
    validate_poolconf,
)
from django_poolconf.conf.replicas import Topology, mirror_replicas_in_tests, topology
from django_poolconf.conf.router import (
    BALANCE_CHOICES,
    MIDDLEWARE_PATH,
    ROUTER_KEYS,
    ROUTER_PATH,
    Balance,
    RouterSettings,
    router_settings,
    validate_router,
)
from django_poolconf.conf.rules import (
    POOLED_ENGINE_PREFIX,
    Problem,
    Rule,
    get_poolconf,
    is_pooled,
)

__all__ = [
    "BALANCE_CHOICES",
    "DETAIL_CHOICES",
    "HEALTH_KEYS",
    "MIDDLEWARE_PATH",
    "POOLCONF_KEYS",
    "POOLED_ENGINE_PREFIX",
    "POOL_KEYS",
    "RESET_CHOICES",
    "ROUTER_KEYS",
    "ROUTER_PATH",
    "WORKERS_ENV",
    "Balance",
    "Detail",
    "HealthSettings",
    "PoolSettings",
    "Problem",
    "ResetOnReturn",
    "RouterSettings",
    "Rule",
    "Topology",
    "get_poolconf",
    "health_settings",
    "is_pooled",
    "mirror_replicas_in_tests",
    "pool_settings",
    "router_settings",
    "topology",
    "validate_alias",
    "validate_poolconf",
    "validate_router",
]
