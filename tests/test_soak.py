"""A bounded HTTP load on the example project under gunicorn: no leak, no excess, flat memory.

``wrk`` (32 connections) loads the example project under ``gunicorn --worker-class
gthread`` (2 workers of 12 threads, more threads than the pool's ``5 + 5``
connections) on a database of its own of the suite's primary, for
``POOLCONF_SOAK_SECONDS`` seconds (15 by default: the form the suite, and so CI,
runs; ``POOLCONF_SOAK_SECONDS=120`` is the long form of ``docs/reliability.rst``).
The requests cycle through an ORM read (``/api/notes``), the pool's numbers
(``/api/pool``) and a short ``pg_sleep`` on the primary (``/pool/work``).

Checked: wrk saw no socket error and no response other than 2xx; the app's server
connections, sampled in ``pg_stat_activity`` 100 ms after each other (about four
times a second on a loaded two-core machine), were never more than
``workers x (pool_size + max_overflow)`` (nothing else of the app connects: no
health probe runs, and the example has no replica to monitor), not counting the
backends of connections the pools had already closed, still exiting (see
``_Sampler``); after the load each worker has no connection
checked out but the one its ``/api/pool`` request holds, and nobody waiting; each
worker's resident memory grew by less than 10 MiB or 10 %, whichever is larger,
from the end of a warm-up to the end of the load; and, SIGTERM to gunicorn, every
connection is closed cleanly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from django_poolconf.embedded import EmbeddedCluster, EmbeddedServer
from tests.http_server import (
    POOL_CAPACITY,
    Gunicorn,
    log_of_backends,
    open_client_ports,
    rss_kib,
    serve,
    unclean_closes,
    wait_for_no_backend,
)

pytestmark = pytest.mark.slow

SECONDS_ENV = "POOLCONF_SOAK_SECONDS"
DEFAULT_SECONDS = 15
WARMUP_S = 3
WORKERS = 2
THREADS = 12
CONNECTIONS = 32
SAMPLE_INTERVAL_S = 0.1
#: A response slower than this is a socket error (wrk's default is 2 s): long enough
#: for a loaded two-core machine shared with other work, short of any hang.
WRK_TIMEOUT_S = 10
#: Growth of a worker's RSS allowed: the larger of these.
RSS_GROWTH_KIB = 10 * 1024
RSS_GROWTH_RATIO = 0.10
WRK_SCRIPT = """
local paths = {"/api/notes", "/api/notes", "/api/pool", "/pool/work?hold=0.005&on=primary"}
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def _wrk(script: Path, url: str, seconds: int) -> str:
    wrk = shutil.which("wrk")
    # Not a skip: CI installs wrk (.ci/run), and a soak that did not run proves nothing.
    assert wrk is not None, "wrk is not installed (Debian: apt-get install wrk)"
    result = subprocess.run(
        [wrk, "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", f"--timeout={WRK_TIMEOUT_S}s"]
        + ["--script", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _requests(output: str) -> int:
    match = re.search(r"(\d+) requests in", output)
    assert match, output
    return int(match.group(1))


class _Sampler:
    """Count the app's server connections in a thread, SAMPLE_INTERVAL_S apart.

    ``counts`` are the app's backends in ``pg_stat_activity``. A backend outlives
    its connection a moment: the pool closes a connection (an overflow one, given
    back while ``pool_size`` are idle) and opens another at once, while the first
    one's backend is still exiting, which on a loaded machine can take a while.
    When a sample counts more than ``capacity``, ``held`` counts only the backends
    whose connection a worker held open just before or just after the query (their
    ``client_port`` among the workers' open sockets): what the pools hold.
    """

    def __init__(
        self,
        server: EmbeddedServer,
        database: str,
        workers: list[int],
        capacity: int,
    ) -> None:
        self._server = server
        self._database = database
        self._workers = workers
        self._capacity = capacity
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.counts: list[int] = []
        self.held: list[int] = []

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self._server.url(), autocommit=True) as connection:
            while True:
                before = open_client_ports(self._workers, self._server.port)
                ports = self._ports(connection)
                self.counts.append(len(ports))
                held = len(ports)
                if held > self._capacity:
                    open_ports = before | open_client_ports(
                        self._workers, self._server.port
                    )
                    held = sum(1 for port in ports if port in open_ports)
                self.held.append(held)
                if self._stop.wait(SAMPLE_INTERVAL_S):
                    return

    def _ports(self, connection: psycopg.Connection[Any]) -> list[int]:
        rows = connection.execute(
            "SELECT client_port FROM pg_stat_activity"
            " WHERE datname = %s AND backend_type = 'client backend'",
            [self._database],
        ).fetchall()
        return [row[0] for row in rows]


def _settled_pools(app: Gunicorn, workers: list[int]) -> dict[int, Any]:
    """``/api/pool`` of each worker, once none has a connection out but its own.

    wrk stops with requests in flight, which the workers finish after it exits: asked
    on new connections until each worker has answered with ``checked_out == 1`` (the
    ``/api/pool`` request's own connection), or for 30 s. A leaked connection would
    stay checked out.
    """
    answers: dict[int, Any] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = app.get_json("/api/pool")
        answers[data["process"]] = data["aliases"]["default"]
        if set(answers) == set(workers) and all(
            numbers["checked_out"] == 1 for numbers in answers.values()
        ):
            break
        time.sleep(0.05)
    return answers


def test_soak_leaks_no_connection_stays_within_capacity_and_keeps_memory_flat(
    cluster: EmbeddedCluster, tmp_path: Path
) -> None:
    seconds = int(os.environ.get(SECONDS_ENV, DEFAULT_SECONDS))
    server = cluster.primary
    script = tmp_path / "paths.lua"
    script.write_text(WRK_SCRIPT)
    capacity = WORKERS * POOL_CAPACITY
    with (
        psycopg.connect(server.url(), autocommit=True) as admin,
        serve(
            server,
            admin,
            tmp_path,
            workers=WORKERS,
            threads=THREADS,
            graceful_timeout=10,
        ) as app,
    ):
        workers = app.wait_for_workers()
        warmup = _wrk(script, app.url, WARMUP_S)
        rss_before = {pid: rss_kib(pid) for pid in workers}
        with _Sampler(server, app.database, workers, capacity) as sampler:
            output = _wrk(script, app.url, seconds)
        rss_after = {pid: rss_kib(pid) for pid in workers}
        assert app.worker_pids() == workers, app.output()  # none restarted
        pools = _settled_pools(app, workers)
        app.terminate()
        gunicorn_log = app.output()
        left = wait_for_no_backend(admin, app.database)
        pids, lines = log_of_backends(server, app)

    growth = {pid: rss_after[pid] - rss_before[pid] for pid in workers}
    print(
        f"MEASURED soak: {seconds} s, {_requests(output)} requests"
        f" ({_requests(output) / seconds:.0f}/s) after {_requests(warmup)} in the"
        f" warm-up; server connections at most {max(sampler.counts)}, held by the"
        f" pools at most {max(sampler.held)}, of {capacity} ({len(sampler.counts)}"
        " samples); RSS per worker"
        + "".join(
            f" {rss_before[pid] / 1024:.1f} -> {rss_after[pid] / 1024:.1f} MiB"
            for pid in workers
        )
        + f"; {len(pids)} server connections opened in all"
    )
    for run in (warmup, output):
        assert "Socket errors" not in run, run
        assert "Non-2xx or 3xx responses" not in run, run
    assert _requests(output) > 0, output
    assert len(sampler.counts) >= seconds * 2, sampler.counts  # it did sample
    assert max(sampler.held) <= capacity, (sampler.counts, sampler.held)
    assert set(pools) == set(workers), (pools, workers)
    for pid, numbers in pools.items():
        # The /api/pool request holds one: its own.
        assert numbers["checked_out"] == 1, (pid, numbers)
        assert numbers["waiting"] == 0, (pid, numbers)
    for pid in workers:
        allowed = max(RSS_GROWTH_KIB, rss_before[pid] * RSS_GROWTH_RATIO)
        assert growth[pid] < allowed, (pid, rss_before, rss_after)
    for text in ("SIGKILL", "WORKER TIMEOUT", "Traceback", "leak", "replacing"):
        assert text not in gunicorn_log, gunicorn_log
    # One pool per worker, for the whole load.
    assert gunicorn_log.count("created pool for 'default'") == WORKERS, gunicorn_log
    assert left == [], left
    assert unclean_closes(lines) == [], "\n".join(lines)
