"""Views that behave like the requests of a real app, for whole request cycles."""

from __future__ import annotations

import json

from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path

from tests.testapp.models import Item


def _pid() -> int:
    return connection.connection.info.backend_pid  # type: ignore[no-any-return]


def item(request: HttpRequest) -> HttpResponse:
    """One small ORM read, as most requests do."""
    first = Item.objects.filter(name="a").first()
    return JsonResponse({"pid": _pid(), "found": first is not None})


def session_state(request: HttpRequest) -> HttpResponse:
    """Report the session state a borrower finds."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW search_path")
        search_path = cursor.fetchone()[0]
        cursor.execute("SHOW statement_timeout")
        statement_timeout = cursor.fetchone()[0]
        cursor.execute("SELECT to_regclass('pg_temp.scratch') IS NOT NULL")
        temp_table = cursor.fetchone()[0]
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        advisory_locks = cursor.fetchone()[0]
    return JsonResponse(
        {
            "pid": _pid(),
            "in_transaction": connection.connection.info.transaction_status != 0,
            "search_path": search_path,
            "statement_timeout": statement_timeout,
            "temp_table": temp_table,
            "advisory_locks": advisory_locks,
        }
    )


def change_session(request: HttpRequest) -> HttpResponse:
    """Leave session state behind: the next borrower must not see it."""
    with connection.cursor() as cursor:
        cursor.execute("SET search_path TO pg_catalog")
        cursor.execute("SET statement_timeout = 1234")
        cursor.execute("CREATE TEMP TABLE scratch (id int)")
        cursor.execute("SELECT pg_advisory_lock(42)")
    return JsonResponse({"pid": _pid()})


def raise_in_atomic(request: HttpRequest) -> HttpResponse:
    """Fail half-way through a transaction."""
    with transaction.atomic():
        Item.objects.create(name="never committed")
        raise RuntimeError("boom")


def sql(request: HttpRequest) -> HttpResponse:
    """Run the statement in the request body; return its first row."""
    with connection.cursor() as cursor:
        cursor.execute(request.GET["q"])
        row = cursor.fetchone() if cursor.description else None
    return HttpResponse(json.dumps({"pid": _pid(), "row": row}, default=str))


def hold_connection(request: HttpRequest) -> HttpResponse:
    """Query, then keep the connection for ``s`` seconds before the request ends."""
    import time

    pid = Item.objects.filter(name="a").exists() and _pid() or _pid()
    time.sleep(float(request.GET["s"]))
    return JsonResponse({"pid": pid})


urlpatterns = [
    path("item/", item),
    path("session/", session_state),
    path("change-session/", change_session),
    path("raise-in-atomic/", raise_in_atomic),
    path("sql/", sql),
    path("hold/", hold_connection),
    path("router/", include("tests.routing_urls")),
    path("health/", include("django_poolconf.urls")),
]
