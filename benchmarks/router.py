"""What the read/write router costs: per routing call, and per request.

    python -P benchmarks/router.py [--rounds 7]

Starts an embedded PostgreSQL primary, and points both ``default`` and a replica
alias at it, so that the two servers' speeds do not blur the router's own cost.
Prints medians in microseconds. Not part of CI.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _time(fn: Callable[[], object], number: int) -> float:
    """Microseconds per call."""
    started = time.perf_counter_ns()
    for _ in range(number):
        fn()
    return (time.perf_counter_ns() - started) / number / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)

    from django_poolconf.embedded import EmbeddedCluster

    with EmbeddedCluster.start(replica=False) as cluster:
        cluster.create_database("bench")
        return _run(cluster, args.rounds)


def _run(cluster: object, rounds: int) -> int:
    import django
    from django.conf import settings

    databases = cluster.databases("bench")  # type: ignore[attr-defined]
    databases["replica"] = {**databases["default"], "REPLICA_OF": "default"}
    settings.configure(
        SECRET_KEY="bench",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=["django.contrib.contenttypes", "django_poolconf"],
        DATABASES=databases,
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        USE_TZ=True,
        POOLCONF={"ROUTER": {"PIN_SECONDS": 60}},
    )
    django.setup()

    from django.contrib.contenttypes.models import ContentType
    from django.core.handlers.wsgi import WSGIHandler
    from django.db import connections, router
    from django.test import RequestFactory, override_settings

    from django_poolconf.routers import ReadWriteRouter, routing_scope

    read_router = ReadWriteRouter()
    environ = RequestFactory().get("/read/").environ

    def cycle(handler: WSGIHandler, extra: dict[str, str] | None = None) -> None:
        result = handler({**environ, **(extra or {})}, lambda status, headers: None)
        b"".join(result)
        result.close()

    results: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    for _ in range(rounds):
        with routing_scope():
            read_router.db_for_read(ContentType)  # choose the replica, connect
            record(
                "db_for_read(), replica already chosen",
                _time(lambda: read_router.db_for_read(ContentType), 20_000),
            )
            record(
                "db_for_write()",
                _time(lambda: read_router.db_for_write(ContentType), 20_000),
            )
            record(
                "db_for_read() after a write",
                _time(lambda: read_router.db_for_read(ContentType), 20_000),
            )
        connections.close_all()

    plain = WSGIHandler()
    with override_settings(
        DATABASE_ROUTERS=["django_poolconf.routers.ReadWriteRouter"],
        MIDDLEWARE=["django_poolconf.middleware.ReadWriteMiddleware"],
    ):
        routed = WSGIHandler()
        cycle(routed, {"PATH_INFO": "/write/"})
        pin = f"poolconf_pin={_last_pin(routed, environ)}"
        for _ in range(rounds):
            # Interleaved, so that drift hits every variant alike.
            with override_settings(DATABASE_ROUTERS=[]):
                record("request, 1 read, no router", _time(lambda: cycle(plain), 2000))
            record(
                "request, 1 read, router + middleware",
                _time(lambda: cycle(routed), 2000),
            )
            record(
                "request, 1 read, carrying a pin cookie",
                _time(lambda: cycle(routed, {"HTTP_COOKIE": pin}), 2000),
            )
            record(
                "router.db_for_read() through Django, in a request",
                _per_read_in_request(router, ContentType),
            )
    print(f"{'what':<52} {'median µs':>10} {'min µs':>8}")
    for name, values in results.items():
        print(f"{name:<52} {statistics.median(values):>10.2f} {min(values):>8.2f}")
    return 0


def _per_read_in_request(router: object, model: type) -> float:
    from django.db import connections

    from django_poolconf.routers import routing_scope

    with routing_scope():
        router.db_for_read(model)  # type: ignore[attr-defined]
        value = _time(lambda: router.db_for_read(model), 20_000)  # type: ignore[attr-defined]
    connections.close_all()
    return value


def _last_pin(handler: object, environ: dict[str, object]) -> str:
    headers: list[tuple[str, str]] = []
    result = handler(  # type: ignore[operator]
        {**environ, "PATH_INFO": "/write/"},
        lambda status, response_headers: headers.extend(response_headers),
    )
    b"".join(result)
    result.close()
    return dict(headers)["X-Poolconf-Pin"]


def _read(request: object) -> object:
    from django.contrib.contenttypes.models import ContentType
    from django.http import HttpResponse

    rows = list(ContentType.objects.raw("SELECT 1 AS id"))
    return HttpResponse(str(len(rows)))


def _write(request: object) -> object:
    from django.http import HttpResponse

    from django_poolconf.routers import note_write

    note_write("default")
    return HttpResponse("ok")


def _urlpatterns() -> list[object]:
    from django.urls import path

    return [path("read/", _read), path("write/", _write)]


def __getattr__(name: str) -> object:
    if name == "urlpatterns":  # read by Django once settings are configured
        return _urlpatterns()
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(main())
