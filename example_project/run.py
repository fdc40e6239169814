"""Run the example project on an embedded PostgreSQL primary and streaming replica.

    python example_project/run.py              # serve on http://127.0.0.1:8000/
    python example_project/run.py --port 8001
    python example_project/run.py --smoke      # a few requests, then exit 0 or 1

The servers live in a temporary directory and are stopped, and their data removed,
when this script exits.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import Sequence
from http.cookies import SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.core.handlers.wsgi import WSGIHandler

    from django_poolconf.embedded import EmbeddedCluster

ROOT = Path(__file__).resolve().parent.parent
DATABASE_NAME = "example"
SEED_NOTES = (
    "Django borrows a connection from the pool for each request.",
    "At the end of the request the connection goes back to the pool, still open.",
    "The replica streams everything written on the primary.",
)
PAGES = (
    ("/", "the notes, with a form to add one, and which server answered"),
    ("/pool", "the pools, live: a chart per alias, the router, a burst of load"),
    ("/api/notes", "the notes as JSON"),
    (
        "/api/notes/wait",
        "read, wait 50 ms (another service), read: the I/O benchmark's page",
    ),
    ("/api/pool", "the pools' numbers and which server answered, as JSON"),
    (
        "/health/db",
        "readiness: every pool and server (200, or 503 if the primary is down)",
    ),
    ("/health/db/live", "liveness: answers without touching a database"),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8000, help="default: 8000")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="send a few requests through Django's WSGI handler instead of serving",
    )
    args = parser.parse_args(argv)

    # The project is imported as example_project.*, from the repository root.
    sys.path.insert(0, str(ROOT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "example_project.settings"
    if not args.smoke and not _port_is_free(args.port):
        # Checked before starting PostgreSQL: runserver leaves with os._exit() when it
        # cannot bind, which would skip stopping the cluster.
        print(f"Port {args.port} on 127.0.0.1 is in use; try --port.", file=sys.stderr)
        return 1
    # Ctrl-C and `kill <pid>` both end in the finally clause that stops PostgreSQL.
    # SIGINT is set as well because a shell without job control starts `run.py &`
    # with SIGINT ignored, and then `kill -INT` would do nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    from django_poolconf.embedded import EmbeddedCluster

    print("Starting PostgreSQL: a primary and a streaming replica ...", flush=True)
    started = time.monotonic()
    try:
        # start() stops whatever it started when it fails or is interrupted.
        cluster = EmbeddedCluster.start()
    except RuntimeError as err:
        print(f"Could not start PostgreSQL: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    try:
        print(
            f"Started in {time.monotonic() - started:.1f} s, in {cluster.base_dir}"
            " (removed at exit).",
            flush=True,
        )
        _prepare(cluster)
        if args.smoke:
            return _smoke()
        _serve(args.port)  # runserver turns Ctrl-C into sys.exit(0)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        _shutdown(cluster)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As runserver's socketserver does, so that a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _prepare(cluster: EmbeddedCluster) -> None:
    """Point the settings at the cluster, set Django up, migrate and seed."""
    assert cluster.replica is not None
    cluster.create_database(DATABASE_NAME)
    # What a deployment would put in the environment; settings.py reads it.
    os.environ["DATABASE_URL"] = cluster.primary.url(DATABASE_NAME)
    os.environ["DATABASE_REPLICA_URLS"] = cluster.replica.url(DATABASE_NAME)
    print(f"DATABASE_URL={os.environ['DATABASE_URL']}")
    print(f"DATABASE_REPLICA_URLS={os.environ['DATABASE_REPLICA_URLS']}", flush=True)

    import django
    from django.core.management import call_command
    from django.db import connections

    django.setup()
    call_command("migrate", verbosity=1)

    from example_project.notes.models import Note

    if not Note.objects.exists():
        Note.objects.bulk_create(Note(text=text) for text in SEED_NOTES)
    # Return this thread's connections to their pools before serving.
    connections.close_all()
    # The replica has the database and the seed rows before the first request.
    cluster.wait_for_replica()


def _serve(port: int) -> None:
    from django.core.management import call_command

    from example_project.notes.live import history

    url = f"http://127.0.0.1:{port}"
    width = max(len(path) for path, _ in PAGES)
    print()
    print(f"The example project is at {url}/")
    for path, what in PAGES:
        print(f"  {url}{path:<{width}}  {what}")
    print()
    print(
        "poolstatus and other manage.py commands on these servers, from another terminal:"
    )
    print(f"  {_manage_command('poolstatus')}")
    print()
    print("Stop it with Ctrl-C; that also stops PostgreSQL.")
    print(flush=True)
    # The live pool page shows the last minute: start counting now.
    history.start()
    # The autoreloader would run this script again in a child process, with a second cluster.
    # call_command() skips system checks unless told otherwise; runserver should run them.
    call_command(
        "runserver", f"127.0.0.1:{port}", use_reloader=False, skip_checks=False
    )


def _manage_command(*args: str) -> str:
    """A shell command line running ``example_project/manage.py`` on this cluster.

    The URLs carry no password: the embedded servers trust loopback connections.
    """
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(Path.cwd())
    environment = [
        f"{name}={shlex.quote(os.environ[name])}"
        for name in ("DATABASE_URL", "DATABASE_REPLICA_URLS")
    ]
    manage = Path(__file__).resolve().parent / "manage.py"
    with contextlib.suppress(ValueError):
        manage = manage.relative_to(Path.cwd())
    return " ".join([*environment, shlex.join([str(python), str(manage), *args])])


def _smoke() -> int:
    """Send requests as a WSGI server would and check the answers; return the exit status."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.management import call_command
    from django.db import connections
    from django.test import RequestFactory

    from django_poolconf import pool_stats

    # As runserver does, plus the checks that connect to each database.
    call_command("check", databases=list(connections))
    connections.close_all()
    handler = WSGIHandler()
    factory = RequestFactory(HTTP_HOST="127.0.0.1")
    failures: list[str] = []

    def request(method: str, path: str, expected: int, **kwargs: Any) -> _Response:
        environ = getattr(factory, method.lower())(path, **kwargs).environ
        response = _call(handler, environ)
        ok = response.status == expected
        print(
            f"{method:<4} {path:<11} {response.status}  {response.elapsed_ms:6.1f} ms"
        )
        if not ok:
            failures.append(
                f"{method} {path} answered {response.status}, not {expected}"
            )
        return response

    def check(condition: bool, failure: str) -> None:
        if not condition:
            failures.append(failure)

    page = request("GET", "/", 200)
    check(SEED_NOTES[0] in page.text, "the notes page does not list the seed notes")
    check(
        'data-alias="replica1" data-port=' in page.text,
        "the notes page does not say it was read from 'replica1'",
    )

    # The form's CSRF protection is on: send back the cookie and its token, as a browser does.
    token = page.cookies.get("csrftoken")
    check(token is not None, "the notes page set no csrftoken cookie")
    text = "Written by the smoke test."
    posted = request(
        "POST",
        "/",
        302,
        data={"text": text, "csrfmiddlewaretoken": token or ""},
        HTTP_COOKIE=f"csrftoken={token}",
    )
    check(posted.headers.get("Location") == "/", "adding a note did not redirect to /")

    # The router pinned this client after its write: send the pin back, as a browser
    # would, and the next read sees the new note even if the replica lags.
    pin = posted.cookies.get("poolconf_pin")
    check(pin is not None, "adding a note set no poolconf_pin cookie")
    notes = request("GET", "/api/notes", 200, HTTP_COOKIE=f"poolconf_pin={pin}").json()[
        "notes"
    ]
    check(notes[0]["text"] == text, "the new note is not the first in /api/notes")

    waited = request("GET", "/api/notes/wait", 200).json()
    check(waited["count"] >= 1, "/api/notes/wait did not read the notes")

    live = request("GET", "/pool", 200)
    check("Pools, live" in live.text, "/pool is not the live pool page")
    for _ in range(3):
        pool = request("GET", "/api/pool", 200).json()
    aliases = pool["aliases"]
    check(
        pool["router"]["read_from"] == "replica1",
        "a request without a pin does not read from 'replica1'",
    )
    check(
        aliases["default"]["server"]["in_recovery"] is False,
        "'default' is not served by the primary",
    )
    check(
        aliases["replica1"]["server"]["in_recovery"] is True,
        "'replica1' is not served by the replica",
    )
    check(
        aliases["default"]["checked_out"] == 1,
        "/api/pool did not see its own checked-out connection",
    )
    request("GET", "/", 200)

    health = request("GET", "/health/db", 200).json()
    check(health["status"] == "healthy", f"/health/db says {health['status']!r}")
    check(
        set(health["databases"]) == {"default", "replica1"},
        "/health/db does not report both aliases",
    )
    request("GET", "/health/db/live", 200)

    print()
    for alias in ("default", "replica1"):
        stats = pool_stats(alias)
        print(
            f"{alias}: pool_size={stats.pool_size} checked_in={stats.checked_in} "
            f"checked_out={stats.checked_out} overflow={stats.overflow}"
        )
        check(stats.checked_out == 0, f"{alias!r} has connections checked out")

    if failures:
        print("\nSmoke test FAILED:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    print("\nSmoke test passed: every request answered as expected.")
    return 0


class _Response:
    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        body: bytes,
        elapsed_ms: float,
        cookies: dict[str, str],
    ) -> None:
        self.status = status
        self.headers = headers  # the last value of each; cookies has every Set-Cookie
        self.body = body
        self.elapsed_ms = elapsed_ms
        self.cookies = cookies

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


def _call(handler: WSGIHandler, environ: dict[str, Any]) -> _Response:
    """One whole request cycle, as a WSGI server runs it.

    Django's test client keeps the connection checked out between requests; a server
    calls ``close()`` on the response, which sends ``request_finished``, which returns
    the connection to the pool.
    """
    started = time.perf_counter()
    statuses: list[str] = []
    headers: dict[str, str] = {}

    cookies: SimpleCookie = SimpleCookie()

    def start_response(
        status: str, response_headers: Any, exc_info: Any = None
    ) -> None:
        statuses.append(status)
        headers.update(response_headers)
        for name, value in response_headers:
            if name.lower() == "set-cookie":
                cookies.load(value)

    result = handler(environ, start_response)
    with contextlib.closing(result):
        body = b"".join(result)
    elapsed_ms = (time.perf_counter() - started) * 1000
    return _Response(
        int(statuses[0].split()[0]),
        headers,
        body,
        elapsed_ms,
        {name: morsel.value for name, morsel in cookies.items()},
    )


def _shutdown(cluster: EmbeddedCluster) -> None:
    from django_poolconf import dispose_all
    from example_project.notes.live import BURST_TIMEOUT_S, wait_for_burst

    # Requests of a burst from the live pool page are still being answered.
    if not wait_for_burst(BURST_TIMEOUT_S):
        print("A burst of requests is still running; stopping anyway.", flush=True)
    print("Stopping PostgreSQL ...", flush=True)

    try:
        # Close the pooled connections first, so the servers stop without ending sessions.
        dispose_all()
    finally:
        cluster.stop()
    print("Stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
