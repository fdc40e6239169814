"""Time Django's request cycle with each connection strategy, in one process, in one run.

    python benchmarks/request_cycle.py [--cycles 500] [--rounds 7]

Starts an embedded PostgreSQL server, then runs what Django does per request
(``request_started`` -> one small query -> ``request_finished``) against the same
database through four aliases, interleaved round by round so machine drift cancels:

* ``new_per_request``: Django's default, ``CONN_MAX_AGE = 0``;
* ``persistent``: ``CONN_MAX_AGE = None``, one connection kept open: the floor;
* ``native_pool``: Django's own psycopg pool, ``OPTIONS = {"pool": ...}``;
* ``poolconf``: django-poolconf with its defaults.

Prints the median microseconds per cycle and the ratio to the persistent floor.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STRATEGIES = ("persistent", "poolconf", "native_pool", "new_per_request")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    from django_poolconf.embedded import EmbeddedCluster

    with EmbeddedCluster.start(replica=False) as cluster:
        cluster.create_database("bench")
        server = cluster.primary
        base = {
            "NAME": "bench",
            "USER": server.user,
            "HOST": server.host,
            "PORT": str(server.port),
        }
        import django
        from django.conf import settings

        settings.configure(
            DATABASES={
                "default": {**base, "ENGINE": "django.db.backends.postgresql"},
                "new_per_request": {**base, "ENGINE": "django.db.backends.postgresql"},
                "persistent": {
                    **base,
                    "ENGINE": "django.db.backends.postgresql",
                    "CONN_MAX_AGE": None,
                },
                "native_pool": {
                    **base,
                    "ENGINE": "django.db.backends.postgresql",
                    "OPTIONS": {"pool": {"min_size": 1, "max_size": 4}},
                },
                "poolconf": {**base, "ENGINE": "django_poolconf.backends.postgresql"},
            },
            INSTALLED_APPS=["django_poolconf"],
            USE_TZ=True,
        )
        django.setup()
        from django.core.signals import request_finished, request_started
        from django.db import connections

        with connections["default"].cursor() as cursor:
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS item (id int PRIMARY KEY, name text)"
            )
            cursor.execute("INSERT INTO item VALUES (1, 'a') ON CONFLICT DO NOTHING")
        connections["default"].close()

        def cycles(alias: str, count: int) -> float:
            started = time.perf_counter()
            for _ in range(count):
                request_started.send(sender=None)
                with connections[alias].cursor() as cursor:
                    cursor.execute("SELECT name FROM item WHERE id = %s", [1])
                    cursor.fetchone()
                request_finished.send(sender=None)
            return (time.perf_counter() - started) / count * 1e6

        for alias in STRATEGIES:  # warm up: open pools, import code paths
            cycles(alias, 50)
        results: dict[str, list[float]] = {alias: [] for alias in STRATEGIES}
        for _ in range(args.rounds):
            for alias in STRATEGIES:
                results[alias].append(cycles(alias, args.cycles))
        connections.close_all()
        for alias in ("native_pool",):
            connections[alias].close_pool()
        from django_poolconf import dispose_all

        dispose_all()

    floor = statistics.median(results["persistent"])
    print(f"{'strategy':<18}{'us/cycle':>10}{'x floor':>10}")
    for alias in STRATEGIES:
        median = statistics.median(results[alias])
        print(f"{alias:<18}{median:>10.1f}{median / floor:>10.2f}")


if __name__ == "__main__":
    main()
