"""System checks over the pool configuration. They read settings and never connect."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, Error, Warning

from django_poolconf.conf.pool import validate_alias, validate_poolconf
from django_poolconf.conf.router import validate_router

__all__ = ["check_deployment", "check_pool_settings"]


def check_pool_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Report every problem in ``DATABASES[*]["POOL"]``, ``REPLICA_OF`` and ``POOLCONF``."""
    from django.apps import apps
    from django.db import connections

    databases = connections.settings
    messages: list[CheckMessage] = []
    seen: set[tuple[str, str]] = set()
    problems = validate_poolconf()
    for alias, settings_dict in databases.items():
        problems += validate_alias(alias, settings_dict, databases=databases)[1]
    labels = [config.label for config in apps.get_app_configs()]
    problems += validate_router(
        databases=databases, app_labels=labels, check_middleware=True
    )[1]
    for problem in problems:
        # POOLCONF problems come back once per pooled alias too; report them once.
        if (problem.id, problem.msg) in seen:
            continue
        seen.add((problem.id, problem.msg))
        level = Error if problem.is_error else Warning
        messages.append(
            level(problem.msg, hint=problem.hint, id=f"django_poolconf.{problem.id}")
        )
    return messages


def check_deployment(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    """With ``--deploy``: warn when the pools may outgrow ``max_connections`` and more.

    Only the aliases given with ``--database`` are probed (bounded by
    ``POOLCONF["HEALTH"]["TIMEOUT"]``); see :func:`django_poolconf.health.capacity.deployment_problems`.
    """
    from django_poolconf.health.capacity import deployment_problems

    return [
        Warning(problem.msg, hint=problem.hint, id=f"django_poolconf.{problem.id}")
        for problem in deployment_problems(databases)
    ]
