"""The Django app: registers the system checks. Imports nothing heavy."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class DjangoPoolconfAppConfig(AppConfig):
    """django-poolconf's app config."""

    name = "django_poolconf"
    verbose_name = "django-poolconf"

    def ready(self) -> None:
        from django_poolconf.checks import check_deployment, check_pool_settings

        checks.register(check_pool_settings)
        checks.register(check_deployment, checks.Tags.database, deploy=True)
