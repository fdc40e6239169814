"""SIGTERM to gunicorn with requests in flight: they finish, and the pools close cleanly.

The example project runs under ``gunicorn --worker-class gthread`` (2 workers of 10
threads, pools of ``5 + 5``) on a database of its own of the suite's primary, whose
log has every connection and disconnection. 20 requests each hold a connection for
1 s (``/pool/work?hold=1&on=primary``, ``SELECT pg_sleep(1)``); while they run, the
gunicorn master gets SIGTERM.
"""

from __future__ import annotations

import concurrent.futures
import socket
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from django_poolconf.embedded import EmbeddedCluster
from tests.http_server import (
    Gunicorn,
    app_backends,
    log_of_backends,
    serve,
    unclean_closes,
    wait_for_no_backend,
)

pytestmark = pytest.mark.slow

REQUESTS = 20
HOLD_S = 1
GRACEFUL_TIMEOUT_S = 5
#: Beyond the graceful timeout: the machine is shared and loaded.
EXIT_MARGIN_S = 10.0


@pytest.fixture
def observer(cluster: EmbeddedCluster) -> Any:
    # On the "postgres" database: not one of the app's backends.
    with psycopg.connect(cluster.primary.url(), autocommit=True) as connection:
        yield connection


def _request(app: Gunicorn, path: str) -> bytes:
    """Send one GET on a new connection and return every byte received until EOF.

    A connection refused or reset before a byte came back returns ``b""``.
    """
    host, port = app.url.removeprefix("http://").split(":")
    received = b""
    try:
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            while chunk := sock.recv(65536):
                received += chunk
    except ConnectionError:
        pass
    return received


def _complete_200(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 200"):
        return False
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    length = {k.lower(): v for k, v in headers.items()}.get("content-length")
    return length is not None and int(length) == len(body)


def _terminate_in_flight(
    app: Gunicorn,
    observer: psycopg.Connection[Any],
    *,
    requests: int,
    hold_s: float,
    running: int,
) -> tuple[list[bytes], float]:
    """SIGTERM to gunicorn while ``requests`` requests hold a connection ``hold_s`` each.

    Sent once ``running`` of them run on the server. Returns what each request
    received and how long gunicorn took to exit.
    """
    path = f"/pool/work?hold={hold_s}&on=primary"
    with concurrent.futures.ThreadPoolExecutor(requests) as executor:
        futures = [executor.submit(_request, app, path) for _ in range(requests)]
        deadline = time.monotonic() + 30
        while (
            sum(
                1
                for _, _, state in app_backends(observer, app.database)
                if state == "active"
            )
            < running
        ):
            assert time.monotonic() < deadline, app.output()
            time.sleep(0.01)
        stopped_in_s = app.terminate()
        return [future.result(timeout=60) for future in futures], stopped_in_s


def test_sigterm_with_requests_in_flight_finishes_them_and_closes_the_pools(
    cluster: EmbeddedCluster, observer: psycopg.Connection[Any], tmp_path: Path
) -> None:
    server = cluster.primary
    with serve(
        server,
        observer,
        tmp_path,
        workers=2,
        threads=10,
        graceful_timeout=GRACEFUL_TIMEOUT_S,
    ) as app:
        workers = app.wait_for_workers()
        responses, stopped_in_s = _terminate_in_flight(
            app, observer, requests=REQUESTS, hold_s=HOLD_S, running=REQUESTS // 2
        )
        output = app.output()
        left = wait_for_no_backend(observer, app.database)
        pids, lines = log_of_backends(server, app)

    print(
        f"MEASURED shutdown: gunicorn exited {stopped_in_s:.2f} s after SIGTERM;"
        f" {sum(map(_complete_200, responses))} of {REQUESTS} requests answered 200,"
        f" {sum(1 for r in responses if not r)} closed before any byte"
    )
    # Every request was answered in full, or closed before a byte of its answer.
    half = [r for r in responses if r and not _complete_200(r)]
    assert half == [], half
    assert sum(map(_complete_200, responses)) >= REQUESTS // 2, responses
    assert stopped_in_s < GRACEFUL_TIMEOUT_S + EXIT_MARGIN_S, output
    # No worker was killed: each ended its requests and exited.
    for text in ("SIGKILL", "WORKER TIMEOUT", "Traceback"):
        assert text not in output, output
    for pid in workers:
        assert f"Worker exiting (pid: {pid})" in output, output
    # Each worker closed every connection of its pool, which the server saw as a clean
    # close (a Terminate message, not the socket's end), and said so.
    assert left == [], left
    assert pids, "no backend of the app in the server's log"
    assert unclean_closes(lines) == [], "\n".join(lines)
    created = output.count("created pool for 'default'")
    assert created >= 1, output
    assert output.count("disposed pool for 'default'") == created, output


def test_a_request_longer_than_the_graceful_timeout_is_cut_and_its_connection_with_it(
    cluster: EmbeddedCluster, observer: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """The limit of a graceful shutdown: a worker still busy after ``graceful_timeout``.

    gunicorn kills it (SIGKILL), and no exit hook runs in a killed process: its
    requests get no answer, and the server sees their connections end uncleanly.
    """
    server = cluster.primary
    with serve(
        server, observer, tmp_path, workers=1, threads=4, graceful_timeout=1
    ) as app:
        app.wait_for_workers()
        responses, stopped_in_s = _terminate_in_flight(
            app, observer, requests=4, hold_s=2, running=4
        )
        output = app.output()
        left = wait_for_no_backend(observer, app.database)
        pids, lines = log_of_backends(server, app)

    print(
        f"MEASURED shutdown past graceful_timeout=1: gunicorn exited {stopped_in_s:.2f} s"
        f" after SIGTERM; {sum(map(_complete_200, responses))} of 4 requests of 2 s"
        " answered"
    )
    assert responses == [b""] * 4, responses  # cut, before a byte of an answer
    # Killed by the master (which logs no kill while it stops) before its exit hooks.
    assert "disposed pool for 'default'" not in output, output
    assert left == [], left  # the server ends the backends itself
    assert unclean_closes(lines), "\n".join(lines)
