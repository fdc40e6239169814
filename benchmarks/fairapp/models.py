from __future__ import annotations

from django.db import models


class Item(models.Model):
    id = models.IntegerField(primary_key=True)
    name = models.TextField()

    class Meta:
        app_label = "fairapp"
        db_table = "item"
