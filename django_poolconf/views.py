"""The JSON health endpoints: ``/health/db`` (readiness) and ``/health/db/live`` (liveness).

Thin faces over :func:`django_poolconf.health.check_health`: they choose how much to
show, and turn the verdict into an HTTP status.
"""

from __future__ import annotations

import hmac

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from django_poolconf.conf.health import HealthSettings, health_settings
from django_poolconf.health import UNHEALTHY, check_health

__all__ = ["database_health", "liveness"]


@never_cache
@require_safe
def database_health(request: HttpRequest) -> JsonResponse:
    """Check every pooled alias; answer 200 when healthy or degraded, 503 when unhealthy.

    Answers within ``POOLCONF["HEALTH"]["TIMEOUT"]``, whatever the servers do.
    Errors and hosts are shown only to the callers ``POOLCONF["HEALTH"]["DETAIL"]``
    allows.
    """
    options = health_settings()
    report = check_health()
    return JsonResponse(
        report.as_dict(detail=_may_see_detail(request, options)),
        status=503 if report.status == UNHEALTHY else 200,
    )


@never_cache
@require_safe
def liveness(request: HttpRequest) -> JsonResponse:
    """Answer 200 without touching a database: the process serves requests."""
    return JsonResponse({"status": "alive"})


def _may_see_detail(request: HttpRequest, options: HealthSettings) -> bool:
    if options.detail == "staff":
        user = getattr(request, "user", None)  # absent without AuthenticationMiddleware
        return bool(user is not None and user.is_active and user.is_staff)
    if options.detail == "token" and options.token:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), options.token.encode()
        )
    return False
