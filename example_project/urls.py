"""URLs of the example project."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [
    path("", include("example_project.notes.urls")),
    # /health/db (readiness: every pool and server) and /health/db/live (liveness)
    path("health/", include("django_poolconf.urls")),
]
