"""In-process benchmarks: the request cycle, the pool's own overhead, contention.

    python benchmarks/inprocess.py [--quick] [--markdown PATH]

Starts one embedded PostgreSQL server and measures, in one run, interleaved round by
round (A B C A B C ...) so that machine drift cancels, medians of several rounds:

* **cycle**: what Django does per request (``request_started`` -> one small ORM-style
  query -> ``request_finished``) at 1, 4 and 16 threads, for each connection strategy,
  in microseconds per cycle and as a ratio to the persistent-connection floor; plus a
  raw psycopg query on an open connection, the physical floor.
* **round trips**: statements the server saw for N poolconf cycles (pg_stat_statements).
* **overhead**: one checkout+checkin with no query: SQLAlchemy's bare ``QueuePool``,
  poolconf's Django path (its Lender), SQLAlchemy code's path through poolconf's pool
  (listeners), and Django's whole connect()/close() on poolconf;
  and the cProfile function-call count of one checkout+checkin (stable across machines).
* **monitoring**: what statistics and leak detection add to a checkout+checkin.
* **contention**: 64 threads on a 4+4 pool, each request holding its connection for a
  1 ms query: throughput, checkout waits (p50, p99, max) against ``pool_timeout``, errors.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import platform
import pstats
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline  # noqa: E402

QUERY = "SELECT name FROM item WHERE id = %s"


def strategies(base: dict[str, Any], threads: int) -> dict[str, dict[str, Any]]:
    """DATABASES entries, one per strategy, sized for ``threads`` concurrent requests."""
    pg = "django.db.backends.postgresql"
    pooled = "django_poolconf.backends.postgresql"
    size = {"pool_size": threads, "max_overflow": 0}
    found = {
        "persistent": {**base, "ENGINE": pg, "CONN_MAX_AGE": None},
        "poolconf": {**base, "ENGINE": pooled, "POOL": size},
        "poolconf_no_affinity": {
            **base,
            "ENGINE": pooled,
            "POOL": {**size, "thread_affinity": False},
        },
        "poolconf_ping_always": {
            **base,
            "ENGINE": pooled,
            "POOL": {**size, "pre_ping_threshold": 0},
        },
        "poolconf_full_reset": {
            **base,
            "ENGINE": pooled,
            "POOL": {**size, "reset_on_return": "full"},
        },
        "poolconf_leak_detection": {
            **base,
            "ENGINE": pooled,
            "POOL": {**size, "leak_detection_threshold": 60},
        },
        "poolconf_rollback_reset": {
            **base,
            "ENGINE": pooled,
            "POOL": {**size, "reset_on_return": "rollback"},
        },
        "new_per_request": {**base, "ENGINE": pg, "CONN_MAX_AGE": 0},
    }
    if importlib.util.find_spec(baseline.PACKAGE) is not None:
        # The package at the revision given with --baseline, as it was configured.
        found["poolconf_baseline"] = {**base, "ENGINE": baseline.ENGINE, "POOL": size}
    try:
        import psycopg_pool  # noqa: F401
    except ImportError:
        pass
    else:
        found["native_pool"] = {
            **base,
            "ENGINE": pg,
            "OPTIONS": {"pool": {"min_size": threads, "max_size": threads}},
        }
    try:
        import dj_db_conn_pool  # noqa: F401
    except ImportError:
        pass
    else:
        found["django_db_connection_pool"] = {
            **base,
            "ENGINE": "dj_db_conn_pool.backends.postgresql",
            "POOL_OPTIONS": {"POOL_SIZE": threads, "MAX_OVERFLOW": 0, "RECYCLE": 3600},
        }
    return found


def setup(server: Any, threads: int) -> list[str]:
    """Configure Django with every strategy as an alias; return the aliases."""
    import django
    from django.conf import settings

    base = {
        "NAME": "bench",
        "USER": server.user,
        "HOST": server.host,
        "PORT": str(server.port),
    }
    databases = {"default": {**base, "ENGINE": "django.db.backends.postgresql"}}
    aliases = []
    for name, entry in strategies(base, threads).items():
        databases[name] = entry
        aliases.append(name)
    settings.configure(
        DATABASES=databases, INSTALLED_APPS=["django_poolconf"], USE_TZ=True
    )
    django.setup()
    from django.db import connections

    with connections["default"].cursor() as cursor:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS item (id int PRIMARY KEY, name text)"
        )
        cursor.execute("INSERT INTO item VALUES (1, 'a') ON CONFLICT DO NOTHING")
    connections["default"].close()
    return aliases


def cycle(alias: str) -> None:
    from django.core.signals import request_finished, request_started
    from django.db import connections

    request_started.send(sender=None)
    with connections[alias].cursor() as cursor:
        cursor.execute(QUERY, [1])
        cursor.fetchone()
    request_finished.send(sender=None)


def timed_cycles(alias: str, threads: int, count: int) -> float:
    """Microseconds per cycle, per thread, with ``threads`` threads running at once."""
    from django.db import connections

    start = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def work() -> None:
        start.wait()
        try:
            for _ in range(count):
                cycle(alias)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            connections.close_all()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{alias}: {errors[0]!r}")
    return elapsed / count * 1e6


def raw_floor(server: Any, count: int) -> float:
    import psycopg

    with (
        psycopg.connect(**server.connection_params("bench"), autocommit=True) as conn,
        conn.cursor() as cursor,
    ):
        began = time.perf_counter()
        for _ in range(count):
            cursor.execute(QUERY, [1])
            cursor.fetchone()
        return (time.perf_counter() - began) / count * 1e6


def bench_cycle(
    server: Any, aliases: list[str], threads: int, rounds: int, count: int
) -> str:
    for alias in aliases:  # warm up: open pools, import code paths
        timed_cycles(alias, threads, 20)
    results: dict[str, list[float]] = {alias: [] for alias in aliases}
    floors: list[float] = []
    for _ in range(rounds):
        for alias in aliases:
            # new connections cost ~100x: fewer of them keep the run short.
            n = max(count // 20, 10) if alias == "new_per_request" else count
            results[alias].append(timed_cycles(alias, threads, n))
        if threads == 1:
            floors.append(raw_floor(server, count))
    floor = statistics.median(results["persistent"])
    lines = [
        f"Request cycle, {threads} thread(s): microseconds per cycle (median of {rounds})",
        "",
        "| strategy | us/cycle | x persistent | cycles/s (all threads) |",
        "|---|---:|---:|---:|",
    ]
    for alias in sorted(aliases, key=lambda a: statistics.median(results[a])):
        median = statistics.median(results[alias])
        lines.append(
            f"| {alias} | {median:.1f} | {median / floor:.2f} | {threads / median * 1e6:,.0f} |"
        )
    if floors:
        raw = statistics.median(floors)
        lines.append(
            f"| raw psycopg query (physical floor) | {raw:.1f} | {raw / floor:.2f} | |"
        )
    return "\n".join(lines)


def bench_round_trips(server: Any, aliases: list[str], cycles: int) -> str:
    import psycopg

    lines = [f"Round trips: statements the server saw for {cycles} request cycles", ""]
    # A separate, plain connection: Django closes its own at every request_finished.
    with psycopg.connect(**server.connection_params("bench"), autocommit=True) as admin:
        admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        for alias in aliases:
            cycle(alias)
            admin.execute("SELECT pg_stat_statements_reset()")
            for _ in range(cycles):
                cycle(alias)
            rows = admin.execute(
                "SELECT query, calls FROM pg_stat_statements s JOIN pg_database d "
                "ON d.oid = s.dbid WHERE d.datname = 'bench' "
                "AND query NOT LIKE '%pg_stat_statements%'"
            ).fetchall()
            total = sum(calls for _, calls in rows)
            shown = ", ".join(f"{calls} x `{query[:40]}`" for query, calls in rows)
            lines.append(
                f"* {alias}: {total} statements, {total / cycles:.2f} per cycle "
                f"({shown})"
            )
    return "\n".join(lines)


def time_cases(
    cases: dict[str, Callable[[], None]], rounds: int, count: int
) -> dict[str, list[float]]:
    """Microseconds per call of each case, per round, the cases interleaved."""
    for fn in cases.values():
        fn()
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            began = time.perf_counter()
            for _ in range(count):
                fn()
            results[name].append((time.perf_counter() - began) / count * 1e6)
    return results


def bench_overhead(server: Any, rounds: int, count: int) -> str:
    import psycopg
    from django.db import connections
    from sqlalchemy.pool import QueuePool

    from django_poolconf import get_engine

    params = server.connection_params("bench")
    bare = QueuePool(
        lambda: psycopg.connect(**params),
        pool_size=1,
        max_overflow=0,
        reset_on_return=None,
    )
    engine = get_engine("poolconf")
    wrapper = connections["poolconf"]
    lender = wrapper._get_lender(wrapper.get_connection_params())

    def bare_cycle() -> None:
        bare.connect().close()

    def pool_cycle() -> None:
        engine.pool.connect().close()

    def lender_cycle() -> None:
        lender.checkin(lender.borrow())

    def django_cycle() -> None:
        wrapper.ensure_connection()
        wrapper.close()

    def affinity_cycle() -> None:
        # What a request's first query and its end cost with thread affinity:
        # take the parked connection back, park it again.
        wrapper.ensure_connection()
        wrapper.close_if_unusable_or_obsolete()

    cases: dict[str, Callable[[], None]] = {
        "SQLAlchemy QueuePool, bare": bare_cycle,
        "poolconf, Django's path (Lender borrow + checkin)": lender_cycle,
        "poolconf, SQLAlchemy's path (pool.connect() + listeners)": pool_cycle,
        "poolconf, Django connect()+close()": django_cycle,
        "poolconf, take back + park (thread affinity, per request)": affinity_cycle,
    }
    results = time_cases(cases, rounds, count)
    calls = {}
    for name, fn in cases.items():
        profile = cProfile.Profile()
        profile.enable()
        fn()
        profile.disable()
        calls[name] = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
    bare.dispose()
    base = statistics.median(results["SQLAlchemy QueuePool, bare"])
    lines = [
        "Checkout + checkin, no query (median of rounds)",
        "",
        "| path | us | x bare QueuePool | function calls |",
        "|---|---:|---:|---:|",
    ]
    for name in cases:
        median = statistics.median(results[name])
        lines.append(f"| {name} | {median:.2f} | {median / base:.2f} | {calls[name]} |")
    return "\n".join(lines)


def bench_monitoring(rounds: int, count: int) -> str:
    """What statistics and leak detection cost on the checkout path."""
    import time as _time

    from django.db import connections

    from django_poolconf.monitoring import Counters

    lenders = {}
    for alias in ("poolconf", "poolconf_leak_detection"):
        wrapper = connections[alias]
        lenders[alias] = wrapper._get_lender(wrapper.get_connection_params())
    counters = Counters()
    monotonic = _time.monotonic

    def statistics_only() -> None:
        # What the checkout path adds for statistics: three clock reads (before
        # and after the wait, at the return) and the two counter updates.
        began = monotonic()
        counters.checked_out(monotonic() - began)
        counters.checked_in(monotonic() - began)

    def borrow(alias: str) -> Callable[[], None]:
        lender = lenders[alias]
        return lambda: lender.checkin(lender.borrow())

    cases: dict[str, Callable[[], None]] = {
        "checkout+checkin, statistics (always on)": borrow("poolconf"),
        "checkout+checkin, statistics + leak detection": borrow(
            "poolconf_leak_detection"
        ),
        "statistics' own work alone": statistics_only,
    }
    results = time_cases(cases, rounds, count)
    base = statistics.median(results["checkout+checkin, statistics (always on)"])
    lines = [
        "Monitoring on the checkout path (median of rounds)",
        "",
        "| path | us | x checkout+checkin |",
        "|---|---:|---:|",
    ]
    for name in cases:
        median = statistics.median(results[name])
        lines.append(f"| {name} | {median:.2f} | {median / base:.2f} |")
    return "\n".join(lines)


def bench_contention(threads: int, requests: int) -> str:
    from django.db import connections

    from django_poolconf import dispose_all

    settings_dict = connections.settings["poolconf"]
    original = settings_dict["POOL"]
    settings_dict["POOL"] = {"pool_size": 4, "max_overflow": 4, "pool_timeout": 10}
    waits: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(threads + 1)

    def work() -> None:
        from django.core.signals import request_finished, request_started

        start.wait()
        mine = []
        try:
            for _ in range(requests):
                request_started.send(sender=None)
                began = time.perf_counter()
                try:
                    connections["poolconf"].ensure_connection()
                except Exception as error:  # noqa: BLE001 - counted
                    with lock:
                        errors.append(type(error).__name__)
                    continue
                finally:
                    mine.append(time.perf_counter() - began)
                with connections["poolconf"].cursor() as cursor:
                    cursor.execute("SELECT pg_sleep(0.001)")
                request_finished.send(sender=None)
        finally:
            connections.close_all()
            with lock:
                waits.extend(mine)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    settings_dict["POOL"] = original
    dispose_all()
    waits_ms = sorted(w * 1000 for w in waits)

    def pct(p: float) -> float:
        return waits_ms[min(len(waits_ms) - 1, int(p * len(waits_ms)))]

    return (
        f"Contention: {threads} threads x {requests} requests on a 4+4 pool "
        f"(pool_timeout 10 s), each holding its connection for a 1 ms query\n\n"
        "| requests/s | wait p50 ms | wait p99 ms | wait max ms | max / pool_timeout | errors |\n"
        "|---:|---:|---:|---:|---:|---:|\n"
        f"| {len(waits) / elapsed:,.0f} | {pct(0.5):.2f} | {pct(0.99):.2f} | "
        f"{waits_ms[-1]:.1f} | {waits_ms[-1] / 10_000:.3f} | {len(errors)} |"
    )


def environment(server: Any) -> str:
    import django
    import psycopg
    import sqlalchemy

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with psycopg.connect(**server.connection_params("bench")) as conn:
        version = conn.info.server_version
    return (
        f"Python {platform.python_version()}, Django {django.get_version()}, "
        f"SQLAlchemy {sqlalchemy.__version__}, psycopg {psycopg.__version__}, "
        f"PostgreSQL {version // 10000}.{version % 10000} on loopback; "
        f"{model}, {len(__import__('os').sched_getaffinity(0))} cores."
    )


def run(quick: bool = False) -> str:
    from django_poolconf import dispose_all
    from django_poolconf.embedded import EmbeddedCluster

    rounds, count = (3, 200) if quick else (7, 500)
    with EmbeddedCluster.start(replica=False) as cluster:
        cluster.create_database("bench")
        aliases = setup(cluster.primary, threads=16)
        parts = [environment(cluster.primary)]
        for threads in (1, 4, 16):
            parts.append(
                bench_cycle(
                    cluster.primary,
                    aliases,
                    threads,
                    rounds,
                    count if threads == 1 else count // threads * 2,
                )
            )
        round_trip_aliases = [
            alias
            for alias in ("poolconf", "poolconf_rollback_reset", "poolconf_baseline")
            if alias in aliases
        ]
        parts.append(bench_round_trips(cluster.primary, round_trip_aliases, 200))
        parts.append(bench_overhead(cluster.primary, rounds, 2000 if quick else 10000))
        parts.append(bench_monitoring(rounds, 2000 if quick else 10000))
        parts.append(bench_contention(64, 20 if quick else 50))
        from django.db import connections

        connections.close_all()
        for alias in connections:
            close_pool = getattr(connections[alias], "close_pool", None)
            if close_pool is not None:
                close_pool()
        dispose_all()
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds, for a smoke run"
    )
    parser.add_argument(
        "--markdown", type=Path, help="also write the tables to this file"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure the package at this git revision (poolconf_baseline)",
    )
    args = parser.parse_args(argv)
    if args.baseline:
        baseline.install(args.baseline)
    text = run(args.quick)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
