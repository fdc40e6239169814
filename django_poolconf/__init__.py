"""Production database connection pooling for Django, on SQLAlchemy's pools."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ConnectionFailed",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "ReadOnlyServer",
    "TooManyRequests",
    "database_from_url",
    "databases_from_env",
    "dispose_all",
    "drain",
    "get_async_engine",
    "get_engine",
    "pool_stats",
    "pool_stats_all",
]

if TYPE_CHECKING:
    from django_poolconf.database_url import database_from_url, databases_from_env
    from django_poolconf.errors import (
        ConnectionFailed,
        PoolClosed,
        PoolError,
        PoolTimeout,
        ReadOnlyServer,
        TooManyRequests,
    )
    from django_poolconf.monitoring import pool_stats, pool_stats_all
    from django_poolconf.pool.registry import (
        dispose_all,
        drain,
        get_async_engine,
        get_engine,
    )

# Imported on first use, so that `import django_poolconf` in a settings module (for
# databases_from_env) does not import Django's database layer or SQLAlchemy.
_LAZY = {
    "database_from_url": "django_poolconf.database_url",
    "databases_from_env": "django_poolconf.database_url",
    "dispose_all": "django_poolconf.pool.registry",
    "drain": "django_poolconf.pool.registry",
    "get_async_engine": "django_poolconf.pool.registry",
    "get_engine": "django_poolconf.pool.registry",
    "ConnectionFailed": "django_poolconf.errors",
    "PoolClosed": "django_poolconf.errors",
    "PoolError": "django_poolconf.errors",
    "PoolTimeout": "django_poolconf.errors",
    "ReadOnlyServer": "django_poolconf.errors",
    "TooManyRequests": "django_poolconf.errors",
    "pool_stats": "django_poolconf.monitoring",
    "pool_stats_all": "django_poolconf.monitoring",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'django_poolconf' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
