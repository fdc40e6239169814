"""URLs of the health endpoints. Include them under a prefix of your choice::

path("health/", include("django_poolconf.urls"))  # /health/db, /health/db/live
"""

from __future__ import annotations

from django.urls import path

from django_poolconf import views

app_name = "django_poolconf"

urlpatterns = [
    path("db", views.database_health, name="health-db"),
    path("db/live", views.liveness, name="health-db-live"),
]
