"""Settings of the example project under gunicorn, for ``benchmarks/http_bench.py``.

Everything comes from ``example_project.settings`` except ``DATABASES``, which has
only ``"default"``, configured for one connection strategy named by environment
variables (``benchmarks/http_bench.py`` sets them for each gunicorn it starts):

* ``POOLCONF_BENCH_STRATEGY``: one of ``STRATEGIES`` below;
* ``POOLCONF_BENCH_HOST``, ``POOLCONF_BENCH_PORT``, ``POOLCONF_BENCH_NAME``,
  ``POOLCONF_BENCH_USER``: where the database is (for ``pgbouncer``, where PgBouncer is).
"""

from __future__ import annotations

import os
from typing import Any, Final

from django.core.exceptions import ImproperlyConfigured

# The pool capacity every pooling strategy gets: gunicorn runs 8 threads.
POOL_CAPACITY: Final = 8

_host = os.environ.get("POOLCONF_BENCH_HOST", "127.0.0.1")
_port = os.environ.get("POOLCONF_BENCH_PORT", "5432")
_name = os.environ.get("POOLCONF_BENCH_NAME", "bench")
_user = os.environ.get("POOLCONF_BENCH_USER", "postgres")

# example_project.settings builds DATABASES from DATABASE_URL when imported and refuses to
# load without it; DATABASES is replaced below, so any URL will do.
os.environ.setdefault("DATABASE_URL", f"postgresql://{_user}@{_host}:{_port}/{_name}")

from example_project.settings import *  # noqa: E402, F403

STRATEGIES: Final = (
    "new_per_request",
    "persistent",
    "native_pool",
    "poolconf",
    "pgbouncer",
    "poolconf_baseline",  # benchmarks/baseline.py, with http_bench.py --baseline
    "poolconf_rollback_reset",  # what the default reset costs is the difference
    "poolconf_transaction",  # checkout_scope = "transaction"
)


def _database(strategy: str) -> dict[str, Any]:
    database: dict[str, Any] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _name,
        "USER": _user,
        "PASSWORD": "",
        "HOST": _host,
        "PORT": _port,
        "CONN_MAX_AGE": 0,
    }
    if strategy == "persistent":
        database["CONN_MAX_AGE"] = None
    elif strategy == "native_pool":
        pool = {"min_size": POOL_CAPACITY, "max_size": POOL_CAPACITY}
        database["OPTIONS"] = {"pool": pool}
    elif strategy in (
        "poolconf",
        "poolconf_baseline",
        "poolconf_rollback_reset",
        "poolconf_transaction",
    ):
        database["ENGINE"] = (
            "django_poolconf_baseline.backends.postgresql"
            if strategy == "poolconf_baseline"
            else "django_poolconf.backends.postgresql"
        )
        database["POOL"] = {"pool_size": POOL_CAPACITY, "max_overflow": 0}
        if strategy == "poolconf_rollback_reset":
            database["POOL"]["reset_on_return"] = "rollback"
        if strategy == "poolconf_transaction":
            database["POOL"]["checkout_scope"] = "transaction"
    elif strategy == "pgbouncer":
        # Persistent client connections to PgBouncer, which shares POOL_CAPACITY server
        # connections per transaction. Transaction pooling rules out server-side cursors
        # and statements prepared on one server connection and used on another.
        database["CONN_MAX_AGE"] = None
        database["DISABLE_SERVER_SIDE_CURSORS"] = True
        database["OPTIONS"] = {"prepare_threshold": None}
    elif strategy != "new_per_request":
        raise ImproperlyConfigured(
            f"POOLCONF_BENCH_STRATEGY must be one of {', '.join(STRATEGIES)}, got {strategy!r}."
        )
    return database


DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
DATABASES = {
    "default": _database(os.environ.get("POOLCONF_BENCH_STRATEGY", "poolconf"))
}
# Nothing per request or per pool; warnings and errors (a 500's traceback) still reach stderr.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
