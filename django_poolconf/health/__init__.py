"""Health of every pooled alias: the checks behind ``/health/db`` and ``poolstatus``.

* :mod:`~django_poolconf.health.report`: the frozen dataclasses and their JSON;
* :mod:`~django_poolconf.health.runner`: :func:`check_health`, which probes every
  alias at once (the vendor's probes live in its backend) within a deadline;
* :mod:`~django_poolconf.health.capacity`: will every worker's pools fit in the
  server's ``max_connections``?

Import the public names from here: ``from django_poolconf.health import check_health``.
"""

from __future__ import annotations

from django_poolconf.health.report import (
    DEGRADED,
    HEALTHY,
    STATS_KEYS,
    UNHEALTHY,
    AliasHealth,
    HealthReport,
    Target,
)
from django_poolconf.health.runner import check_health, pooled_aliases

__all__ = [
    "DEGRADED",
    "HEALTHY",
    "STATS_KEYS",
    "UNHEALTHY",
    "AliasHealth",
    "HealthReport",
    "Target",
    "check_health",
    "pooled_aliases",
]
