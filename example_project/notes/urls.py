from __future__ import annotations

from django.urls import path

from example_project.notes import views

app_name = "notes"

urlpatterns = [
    path("", views.index, name="index"),
    path("api/notes", views.api_notes, name="api_notes"),
    path("pool", views.pool, name="pool"),
]
