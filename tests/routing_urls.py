"""Views for the read/write router's tests: each reports which server answered its reads."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from django_poolconf.routers import use_primary, use_replica
from tests.testapp.models import Item

# A routed read that needs no rows: Item.objects.raw() asks the router for its alias.
SERVER_SQL = (
    "SELECT 0 AS id, pg_is_in_recovery() AS in_recovery, inet_server_port() AS port"
)


def server() -> dict[str, Any]:
    """Which server, and which alias, answered a routed read."""
    row = next(iter(Item.objects.raw(SERVER_SQL)))
    return {
        "in_recovery": row.in_recovery,
        "port": row.port,
        "alias": Item.objects.all().db,
    }


def found(name: str) -> bool:
    return Item.objects.filter(name=name).exists()


def read(request: HttpRequest) -> HttpResponse:
    """Read twice; with ?name=, also whether that item is visible."""
    first = server()
    name = request.GET.get("name")
    return JsonResponse(
        {
            "server": first,
            "again": server(),
            "found": None if name is None else found(name),
        }
    )


def write(request: HttpRequest) -> HttpResponse:
    Item.objects.create(name=request.GET["name"])
    return JsonResponse({"written": True})


def write_then_read(request: HttpRequest) -> HttpResponse:
    name = request.GET["name"]
    Item.objects.create(name=name)
    return JsonResponse({"found": found(name), "server": server()})


def raw_write_then_read(request: HttpRequest) -> HttpResponse:
    name = request.GET["name"]
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO testapp_item (name) VALUES (%s)", [name])
    return JsonResponse({"found": found(name), "server": server()})


def read_in_atomic(request: HttpRequest) -> HttpResponse:
    with transaction.atomic():
        inside = server()
    return JsonResponse({"inside": inside, "after": server()})


def write_then_raise(request: HttpRequest) -> HttpResponse:
    Item.objects.create(name=request.GET["name"])
    raise RuntimeError("the view failed after writing")


def replica_after_write(request: HttpRequest) -> HttpResponse:
    Item.objects.create(name=request.GET["name"])
    with use_replica():
        forced = server()
    return JsonResponse({"forced": forced, "after": server()})


@use_primary
def primary_by_decorator(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"server": server()})


async def async_read(request: HttpRequest) -> HttpResponse:
    name = request.GET.get("name")
    return JsonResponse(
        {
            "server": await sync_to_async(server)(),
            "found": None
            if name is None
            else await Item.objects.filter(name=name).aexists(),
        }
    )


async def async_write(request: HttpRequest) -> HttpResponse:
    await Item.objects.acreate(name=request.GET["name"])
    return JsonResponse({"written": True})


async def async_write_then_read(request: HttpRequest) -> HttpResponse:
    name = request.GET["name"]
    await Item.objects.acreate(name=name)
    return JsonResponse(
        {
            "found": await Item.objects.filter(name=name).aexists(),
            "server": await sync_to_async(server)(),
        }
    )


async def async_read_in_atomic(request: HttpRequest) -> HttpResponse:
    @sync_to_async
    def in_atomic() -> dict[str, Any]:
        with transaction.atomic():
            return server()

    return JsonResponse({"inside": await in_atomic()})


@use_primary
async def async_primary_by_decorator(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"server": await sync_to_async(server)()})


urlpatterns = [
    path("read/", read),
    path("write/", write),
    path("write-then-read/", write_then_read),
    path("raw-write-then-read/", raw_write_then_read),
    path("read-in-atomic/", read_in_atomic),
    path("write-then-raise/", write_then_raise),
    path("replica-after-write/", replica_after_write),
    path("primary-by-decorator/", primary_by_decorator),
    path("async/read/", async_read),
    path("async/write/", async_write),
    path("async/write-then-read/", async_write_then_read),
    path("async/read-in-atomic/", async_read_in_atomic),
    path("async/primary-by-decorator/", async_primary_by_decorator),
]
