from __future__ import annotations

from django.apps import AppConfig


class NotesConfig(AppConfig):
    """The notes app."""

    name = "example_project.notes"
    label = "notes"
