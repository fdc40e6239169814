"""The request cycle as a server runs it: one long-lived process per strategy.

    python -P benchmarks/fair.py [--threads 1 --threads 4] [--rounds 7] [--seconds 1]
                                 [--baseline REV] [--no-io] [--markdown PATH]

Every connection strategy runs in a process of its own (as one gunicorn worker does),
with long-lived worker threads that keep whatever connection the strategy keeps between
rounds: the persistent-connection floor connects once per thread, not once per round.
The controller runs the strategies' rounds interleaved (A B C, B C A, C A B, ...) so
that drift of the machine falls on all of them; only one process works at a time.

Two workloads, both inside Django's request cycle (``request_started`` ... ``request_finished``):

* **cycle**: one ORM get by primary key (``Item.objects.get(pk=1)``), at 1 and 4
  threads, pools sized to the threads. Reported in microseconds per request per thread
  (median of the rounds) and as ratios to persistent connections and to Django's
  native pool, each ratio the median of the rounds' ratios.
* **io**: get, 50 ms of waiting on something that is not the database, get; 64
  threads on a pool of 8 (persistent connections: one per thread). Reported in
  requests per second, errors, and the most server connections the strategy's
  process held at once (sampled every 10 ms from ``pg_stat_activity``).

Each process sets ``application_name`` to its strategy, which is how the server's
connections are counted. PgBouncer (transaction mode, 8 server connections) joins
the io workload when its binary is on ``PATH``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import multiprocessing
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

DATABASE = "bench"
IO_THREADS = 64
IO_POOL = 8
IO_WAIT_S = 0.05
SAMPLE_EVERY_S = 0.01


# -- strategies -------------------------------------------------------------------


def strategies(
    base: dict[str, Any], threads: int, pool: int, *, baseline_engine: str | None
) -> dict[str, dict[str, Any]]:
    """DATABASES["default"] for each strategy, for ``threads`` threads and ``pool``."""
    pg = "django.db.backends.postgresql"
    pooled = "django_poolconf.backends.postgresql"
    size = {"pool_size": pool, "max_overflow": 0, "pool_timeout": 30}
    found: dict[str, dict[str, Any]] = {
        "persistent": {**base, "ENGINE": pg, "CONN_MAX_AGE": None},
        "poolconf": {**base, "ENGINE": pooled, "POOL": size},
    }
    if baseline_engine is not None:
        found["poolconf_baseline"] = {**base, "ENGINE": baseline_engine, "POOL": size}
    if _accepts_checkout_scope():
        found["poolconf_transaction"] = {
            **base,
            "ENGINE": pooled,
            "POOL": {**size, "checkout_scope": "transaction"},
        }
        # What the reset on every return costs transaction scope is the difference.
        found["poolconf_transaction_rollback"] = {
            **base,
            "ENGINE": pooled,
            "POOL": {
                **size,
                "checkout_scope": "transaction",
                "reset_on_return": "rollback",
            },
        }
    if importlib.util.find_spec("psycopg_pool") is not None:
        found["native_pool"] = {
            **base,
            "ENGINE": pg,
            "OPTIONS": {"pool": {"min_size": pool, "max_size": pool, "timeout": 30}},
        }
    return found


def _accepts_checkout_scope() -> bool:
    from django_poolconf.conf import pool as pool_settings

    return "checkout_scope" in pool_settings.POOL_KEYS


# -- the worker process --------------------------------------------------------------


def worker_main(
    control: Connection,
    name: str,
    database: dict[str, Any],
    threads: int,
    paths: list[str],
) -> None:
    """One strategy's process: ``threads`` long-lived threads waiting for rounds."""
    sys.path[:0] = paths
    import django
    from django.conf import settings

    database = {
        **database,
        "OPTIONS": {**database.get("OPTIONS", {}), "application_name": name},
    }
    settings.configure(
        DATABASES={"default": database},
        INSTALLED_APPS=["django_poolconf", "fairapp"],
        USE_TZ=True,
    )
    django.setup()
    from django.core.signals import request_finished, request_started
    from django.db import connections
    from fairapp.models import Item

    def request(kind: str) -> None:
        request_started.send(sender=None)
        try:
            Item.objects.get(pk=1)
            if kind == "io":
                time.sleep(IO_WAIT_S)
                Item.objects.get(pk=1)
        finally:
            request_finished.send(sender=None)

    lock = threading.Lock()
    go = threading.Barrier(threads + 1)
    done = threading.Barrier(threads + 1)
    job: dict[str, Any] = {}
    totals = {"requests": 0, "errors": 0}

    def thread_body() -> None:
        while True:
            go.wait()
            if job["kind"] == "quit":
                connections.close_all()
                done.wait()
                return
            requests = errors = 0
            deadline = job["deadline"]
            while time.monotonic() < deadline:
                try:
                    request(job["kind"])
                except Exception:  # noqa: BLE001 - counted and reported
                    errors += 1
                requests += 1
            with lock:
                totals["requests"] += requests
                totals["errors"] += errors
            done.wait()

    for _ in range(threads):
        threading.Thread(target=thread_body, daemon=True).start()
    while True:
        kind, seconds = control.recv()
        totals.update(requests=0, errors=0)
        job["kind"] = kind
        began = time.monotonic()
        job["deadline"] = began + seconds
        go.wait()
        done.wait()
        elapsed = time.monotonic() - began
        if kind == "quit":
            control.send(None)
            return
        control.send((totals["requests"], totals["errors"], elapsed))


@contextlib.contextmanager
def started(
    name: str, database: dict[str, Any], threads: int, paths: list[str]
) -> Iterator[Connection]:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(
        target=worker_main, args=(theirs, name, database, threads, paths), daemon=True
    )
    process.start()
    try:
        yield ours
        ours.send(("quit", 0))
        ours.recv()
        process.join(30)
    finally:
        if process.is_alive():
            process.kill()
            process.join()


# -- the controller -----------------------------------------------------------------


class Sampler:
    """Counts the server connections of each strategy while a round runs."""

    def __init__(self, params: dict[str, Any]) -> None:
        import psycopg

        self.conn = psycopg.connect(**params, autocommit=True)
        self.most = 0
        self.name = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def count(self) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            [self.name],
        ).fetchone()
        return int(row[0]) if row else 0

    def start(self, name: str) -> None:
        self.name, self.most = name, 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.most = max(self.most, self.count())
            time.sleep(SAMPLE_EVERY_S)

    def stop(self) -> int:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        return self.most


def measure(
    workers: dict[str, Connection],
    kind: str,
    rounds: int,
    seconds: float,
    sampler: Sampler | None = None,
) -> dict[str, list[tuple[int, int, float, int]]]:
    """Per strategy, per round: (requests, errors, elapsed s, most connections)."""
    names = list(workers)
    for name in names:  # warm up: connect, fill pools, import code paths
        workers[name].send((kind, min(seconds, 0.5)))
        workers[name].recv()
    results: dict[str, list[tuple[int, int, float, int]]] = {n: [] for n in names}
    for number in range(rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            if sampler is not None:
                sampler.start(name)
            workers[name].send((kind, seconds))
            requests, errors, elapsed = workers[name].recv()
            most = sampler.stop() if sampler is not None else 0
            results[name].append((requests, errors, elapsed, most))
    return results


def cycle_table(
    threads: int, results: dict[str, list[tuple[int, int, float, int]]]
) -> str:
    # Microseconds per request per thread, round by round.
    per = {
        name: [elapsed * threads / requests * 1e6 for requests, _, elapsed, _ in rows]
        for name, rows in results.items()
    }

    def ratio(name: str, to: str) -> str:
        if to not in per:
            return "-"
        return f"{statistics.median(a / b for a, b in zip(per[name], per[to], strict=True)):.3f}"

    lines = [
        f"### {threads} thread(s): one ORM get per request",
        "",
        "| strategy | us/request | x persistent | x native_pool | x poolconf "
        "| requests/s | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in sorted(per, key=lambda n: statistics.median(per[n])):
        median = statistics.median(per[name])
        errors = sum(row[1] for row in results[name])
        lines.append(
            f"| {name} | {median:.1f} | {ratio(name, 'persistent')} "
            f"| {ratio(name, 'native_pool')} | {ratio(name, 'poolconf')} "
            f"| {threads / median * 1e6:,.0f} | {errors} |"
        )
    if "poolconf_baseline" in per:
        each = ", ".join(
            f"{a / b:.3f}"
            for a, b in zip(per["poolconf"], per["poolconf_baseline"], strict=True)
        )
        lines += ["", f"poolconf / poolconf_baseline, round by round: {each}"]
    return "\n".join(lines)


def io_table(results: dict[str, list[tuple[int, int, float, int]]]) -> str:
    rate = {
        name: [requests / elapsed for requests, _, elapsed, _ in rows]
        for name, rows in results.items()
    }
    lines = [
        f"### {IO_THREADS} threads: get, {IO_WAIT_S * 1000:.0f} ms of waiting, get"
        f" (pools of {IO_POOL})",
        "",
        "| strategy | requests/s | x poolconf | errors | most server connections |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in sorted(rate, key=lambda n: -statistics.median(rate[n])):
        ratio = statistics.median(
            a / b
            for a, b in zip(rate[name], rate.get("poolconf", rate[name]), strict=True)
        )
        lines.append(
            f"| {name} | {statistics.median(rate[name]):,.0f} | {ratio:.2f} "
            f"| {sum(row[1] for row in results[name])} "
            f"| {max(row[3] for row in results[name])} |"
        )
    return "\n".join(lines)


def environment(server: Any) -> str:
    import inprocess

    return inprocess.environment(server)


def run(
    threads_list: list[int],
    rounds: int,
    seconds: float,
    io: bool,
    baseline_rev: str | None,
    only: list[str],
    db_cpu: int | None = None,
) -> str:
    from django_poolconf.embedded import EmbeddedCluster

    paths = [str(HERE.parent), str(HERE)]
    baseline_engine = None
    if baseline_rev is not None:
        import baseline

        paths.insert(0, str(baseline.prepare(baseline_rev)))
        baseline_engine = baseline.ENGINE

    def chosen(found: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        keep = {"persistent", "poolconf", *only} if only else set(found)
        return {name: entry for name, entry in found.items() if name in keep}

    with EmbeddedCluster.start(replica=False) as cluster:
        server = cluster.primary
        cluster.create_database(DATABASE)
        params = server.connection_params(DATABASE)
        import psycopg

        with psycopg.connect(**params, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS item (id int PRIMARY KEY, name text)"
            )
            conn.execute("INSERT INTO item VALUES (1, 'a') ON CONFLICT DO NOTHING")
        base = {
            "NAME": DATABASE,
            "USER": server.user,
            "HOST": server.host,
            "PORT": str(server.port),
        }
        parts = [
            "# The request cycle, one long-lived process per strategy (benchmarks/fair.py)",
            "",
            environment(server),
            f"{rounds} rounds of {seconds:g} s per strategy, interleaved; medians.",
        ]
        if db_cpu is not None:
            import http_bench

            http_bench._pin_database(server, db_cpu)  # after environment(): all CPUs
            parts[-1] += (
                f" PostgreSQL pinned to CPU {db_cpu}, the workers (and PgBouncer) to"
                " the others (`--db-cpu`): the database as on a host of its own."
            )
        for threads in threads_list:
            found = chosen(
                strategies(base, threads, threads, baseline_engine=baseline_engine)
            )
            with contextlib.ExitStack() as stack:
                workers = {
                    name: stack.enter_context(started(name, entry, threads, paths))
                    for name, entry in found.items()
                }
                results = measure(workers, "cycle", rounds, seconds)
            parts += ["", cycle_table(threads, results)]
            print(parts[-1], flush=True)
        if io:
            found = chosen(
                strategies(base, IO_THREADS, IO_POOL, baseline_engine=baseline_engine)
            )
            with contextlib.ExitStack() as stack:
                pgbouncer = shutil.which("pgbouncer")
                if pgbouncer is not None and (not only or "pgbouncer" in only):
                    import http_bench

                    port = stack.enter_context(
                        http_bench.pgbouncer_in_front(
                            pgbouncer, server, database=DATABASE, pool_size=IO_POOL
                        )
                    )
                    found["pgbouncer"] = {
                        **base,
                        "PORT": str(port),
                        "ENGINE": "django.db.backends.postgresql",
                        "CONN_MAX_AGE": None,
                        "DISABLE_SERVER_SIDE_CURSORS": True,
                    }
                workers = {
                    name: stack.enter_context(started(name, entry, IO_THREADS, paths))
                    for name, entry in found.items()
                }
                sampler = Sampler(params)
                try:
                    results = measure(
                        workers, "io", max(rounds // 2, 1), max(seconds, 2), sampler
                    )
                finally:
                    sampler.conn.close()
            parts += ["", io_table(results)]
            print(parts[-1], flush=True)
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, action="append")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0, help="per round")
    parser.add_argument("--no-io", action="store_true", help="skip the io workload")
    parser.add_argument("--baseline", metavar="REV")
    parser.add_argument(
        "--strategy",
        action="append",
        default=[],
        help="measure only these (persistent and poolconf always run); repeatable",
    )
    parser.add_argument(
        "--db-cpu",
        type=int,
        metavar="N",
        help="pin PostgreSQL to CPU N and the workers to the others (default: shared)",
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 0.3 s")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    rounds, seconds = (3, 0.3) if args.quick else (args.rounds, args.seconds)
    text = run(
        args.threads or [1, 4],
        rounds,
        seconds,
        not args.no_io,
        args.baseline,
        args.strategy,
        args.db_cpu,
    )
    if args.markdown:
        args.markdown.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
