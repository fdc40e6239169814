from __future__ import annotations

from django.db import models


class Note(models.Model):
    """A line of text and when it was written."""

    text = models.CharField(max_length=280)
    created = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self) -> str:
        return self.text
