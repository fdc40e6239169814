from __future__ import annotations

from django.urls import path

from example_project.notes import views

app_name = "notes"

urlpatterns = [
    path("", views.index, name="index"),
    path("pool", views.pool, name="pool"),
    path("pool/burst", views.burst, name="burst"),
    path("pool/work", views.work, name="work"),
    path("api/notes", views.api_notes, name="api_notes"),
    path("api/notes/wait", views.api_notes_wait, name="api_notes_wait"),
    path("api/pool", views.api_pool, name="api_pool"),
]
