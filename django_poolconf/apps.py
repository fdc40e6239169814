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
        from django_poolconf.checks import check_pool_settings

        checks.register(check_pool_settings)
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            return
        from django_poolconf import metrics

        metrics.register()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            metrics.start_multiprocess_writer(interval=10.0)
