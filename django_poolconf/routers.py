"""The router's documented path (``DATABASE_ROUTERS``); the code is in :mod:`django_poolconf.routing`."""

from __future__ import annotations

from django_poolconf.routing.router import ReadWriteRouter, note_write
from django_poolconf.routing.scope import Pin, routing_scope, use_primary, use_replica

__all__ = [
    "Pin",
    "ReadWriteRouter",
    "note_write",
    "routing_scope",
    "use_primary",
    "use_replica",
]
