"""The middleware's documented path (``MIDDLEWARE``); the code is in :mod:`django_poolconf.routing.middleware`."""

from __future__ import annotations

from django_poolconf.routing.middleware import SIGNING_SALT, ReadWriteMiddleware

__all__ = ["SIGNING_SALT", "ReadWriteMiddleware"]
