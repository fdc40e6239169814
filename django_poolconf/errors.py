"""Runtime exceptions raised by django-poolconf.

Each one subclasses :class:`django.db.utils.OperationalError`, so code that already
handles database errors handles these too.
"""

from __future__ import annotations

from django.db.utils import InternalError, OperationalError

__all__ = [
    "ConnectionFailed",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "ReadOnlyServer",
    "TooManyRequests",
]


class PoolError(OperationalError):
    """Base class for the errors of a django-poolconf connection pool."""

    __module__ = "django_poolconf"


class PoolTimeout(PoolError):
    """No connection became free in the pool within ``pool_timeout``."""

    __module__ = "django_poolconf"


class TooManyRequests(PoolTimeout):
    """``max_waiting`` checkouts waited already: this one failed at once instead of waiting."""

    __module__ = "django_poolconf"


class ConnectionFailed(PoolError):
    """The pool could not open a new connection to the database server."""

    __module__ = "django_poolconf"


class PoolClosed(PoolError):
    """The engine's pool was disposed; get the current one from ``get_engine()``."""

    __module__ = "django_poolconf"


class ReadOnlyServer(PoolError, InternalError):
    """A write on a primary alias reached a standby: the primary moved (a failover).

    The alias's pool has replaced its connections when this is raised. It is also a
    :class:`django.db.utils.InternalError`, what Django raises for the driver's error
    (SQLSTATE ``25006``), so that code catching that goes on working.
    """

    __module__ = "django_poolconf"
