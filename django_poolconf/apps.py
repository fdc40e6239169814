"""The Django app: registers the system checks and, with prometheus-client, the pool metrics."""

from __future__ import annotations

import os

from django.apps import AppConfig
from django.core import checks


class DjangoPoolconfAppConfig(AppConfig):
    """django-poolconf's app config."""

    name = "django_poolconf"
    verbose_name = "django-poolconf"

    def ready(self) -> None:
        from django.conf import settings

        from django_poolconf.checks import check_deployment, check_pool_settings
        from django_poolconf.conf.replicas import mirror_replicas_in_tests
        from django_poolconf.conf.router import ROUTER_PATH

        checks.register(check_pool_settings)
        checks.register(check_deployment, checks.Tags.database, deploy=True)
        # Before the test runner reads TEST["MIRROR"]: a replica has no test
        # database of its own, it reads its primary's.
        mirror_replicas_in_tests(settings.DATABASES)
        if ROUTER_PATH in getattr(settings, "DATABASE_ROUTERS", ()):
            # Django imports routers at the first routed query; the router must see
            # the connections opened before it (migrate's) to see their writes.
            import django_poolconf.routers  # noqa: F401
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            return
        from django_poolconf import metrics

        metrics.register()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            metrics.start_multiprocess_writer(interval=10.0)
