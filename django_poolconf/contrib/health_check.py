"""A check for `django-health-check <https://github.com/codingjoe/django-health-check>`__ 4.x.

It reports every pooled alias (or one) through :func:`django_poolconf.health.check_health`,
the same checks as ``/health/db``: bounded by ``POOLCONF["HEALTH"]["TIMEOUT"]``,
without holding a pooled connection, and without a host or password in its messages.

.. code-block:: python

    # urls.py
    from health_check.views import HealthCheckView

    path("ht/", HealthCheckView.as_view(checks=[
        "django_poolconf.contrib.health_check.PooledDatabases",
        # or one alias: ("django_poolconf.contrib.health_check.PooledDatabases",
        #                {"alias": "replica"}),
    ]))

A primary that is unhealthy makes the check fail (``ServiceUnavailable``); a degraded
alias (a replica down while reads fall back, a saturated pool, a lagging replica)
makes it warn (``ServiceWarning``).
"""

from __future__ import annotations

import dataclasses
import datetime

from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable, ServiceWarning

from django_poolconf.health import DEGRADED, UNHEALTHY, check_health

__all__ = ["PooledDatabases"]


@dataclasses.dataclass
class PooledDatabases(HealthCheck):  # type: ignore[misc]
    """django-poolconf's pools and servers, as ``/health/db`` sees them."""

    alias: str | None = None  # None: every pooled alias
    # check_health() answers within its own TIMEOUT; this is django-health-check's
    # outer bound, one second above the default.
    timeout: datetime.timedelta = dataclasses.field(
        default=datetime.timedelta(seconds=6), repr=False
    )

    def run(self) -> None:
        report = check_health(None if self.alias is None else [self.alias])
        failing = [
            f"{a.alias} ({a.role}): {a.reason}"
            for a in report.databases
            if a.status != "healthy"
        ]
        if report.status == UNHEALTHY:
            raise ServiceUnavailable("; ".join(failing))
        if report.status == DEGRADED:
            raise ServiceWarning("; ".join(failing))
