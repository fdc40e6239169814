"""The notes pages, the live pool page and their JSON."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any

from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from django_poolconf import pool_stats
from django_poolconf.conf import is_pooled, router_settings
from django_poolconf.replicas import replica_states
from django_poolconf.routers import use_primary
from example_project.notes import live
from example_project.notes.forms import NoteForm
from example_project.notes.models import Note

LATEST_NOTES = 50
WAIT_S = 0.05  # api_notes_wait's stand-in for a call to another service
#: The longest a request of a burst may hold its connection (``?hold=``), in seconds.
MAX_HOLD_S = 2.0


def server_of(alias: str) -> dict[str, Any]:
    """Which server answers ``alias``: its port, and whether it is a replica (in recovery).

    Asked on this request's connection for the alias, so it names the server that
    answered the request's other queries of that alias.
    """
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT inet_server_port(), pg_is_in_recovery()")
        port, in_recovery = cursor.fetchone()
    return {
        "alias": alias,
        "port": port,
        "in_recovery": in_recovery,
        "role": "replica" if in_recovery else "primary",
    }


def _pinned(request: HttpRequest) -> bool:
    """Whether the client sent back the router's pin, set after its last write."""
    return router_settings().cookie_name in request.COOKIES


@never_cache
@require_http_methods(["GET", "POST"])
def index(request: HttpRequest) -> HttpResponse:
    """List the latest notes; add one on POST, then redirect back (post/redirect/get)."""
    if request.method == "POST":
        form = NoteForm(request.POST)
        if form.is_valid():
            form.save()
            return redirect("notes:index")
    else:
        form = NoteForm()
    notes = list(Note.objects.all()[:LATEST_NOTES])
    context = {
        "form": form,
        "notes": notes,
        "answered_by": server_of(Note.objects.all().db),
        "pinned": _pinned(request),
        "pin_seconds": router_settings().pin_seconds,
        "page": "notes",
    }
    return render(request, "notes/index.html", context)


@require_GET
def api_notes(request: HttpRequest) -> JsonResponse:
    """The latest notes as JSON: one query, the page ``benchmarks/http_bench.py`` times."""
    notes = [
        {"id": note.pk, "text": note.text, "created": note.created.isoformat()}
        for note in Note.objects.all()[:LATEST_NOTES]
    ]
    return JsonResponse({"notes": notes})


def api_notes_wait(request: HttpRequest) -> JsonResponse:
    """Read, wait 50 ms on something that is not the database, read again.

    A stand-in for a view that calls another service between two queries: the page
    ``benchmarks/http_bench.py --io`` times, to compare the checkout scopes.
    """
    first = Note.objects.order_by("-pk").values_list("pk", flat=True).first()
    time.sleep(WAIT_S)
    count = Note.objects.count()
    return JsonResponse({"latest": first, "count": count, "waited_ms": WAIT_S * 1000})


def _pools() -> dict[str, Any]:
    """For each pooled alias: which server answered, and its pool's numbers; and the router's view.

    The query runs through Django's connection for the alias, so ``checked_out``
    counts the connection this request holds; the request's end returns it.
    ``router`` says where this request's reads of notes go, and what the router knows
    of each replica; ``process`` is the pid of the process that answered (one worker
    of several under gunicorn: each has pools of its own).
    """
    live.history.start()
    read_from = Note.objects.all().db
    aliases: dict[str, Any] = {}
    for alias in connections:
        settings_dict = connections.settings[alias]
        if not is_pooled(settings_dict):
            continue
        server = server_of(alias)
        stats = pool_stats(alias)
        aliases[alias] = {
            "replica_of": settings_dict.get("REPLICA_OF"),
            "server": server,
            "pool_size": stats.pool_size,
            "checked_in": stats.checked_in,
            "checked_out": stats.checked_out,
            "overflow": stats.overflow,
            "capacity": stats.capacity,
            "waiting": stats.waiting,
            "checkouts": stats.checkouts,
            "last_minute": [asdict(s) for s in live.history.last_minute(alias)],
        }
    replicas = {alias: asdict(state) for alias, state in replica_states().items()}
    return {
        "aliases": aliases,
        "router": {"read_from": read_from, "replicas": replicas},
        "answered_by": aliases[read_from]["server"],
        "process": os.getpid(),
    }


@never_cache
@require_GET
def api_pool(request: HttpRequest) -> JsonResponse:
    """The live pool page's numbers as JSON."""
    return JsonResponse(_pools())


@never_cache
@require_GET
def pool(request: HttpRequest) -> HttpResponse:
    """The live pool page; with ``?partial=1``, only the part its script refreshes."""
    data = _pools()
    for alias, numbers in data["aliases"].items():
        numbers["chart"] = live.chart(
            live.history.last_minute(alias),
            pool_size=numbers["pool_size"],
            capacity=numbers["capacity"],
        )
    context = {**data, "burst_requests": live.BURST_REQUESTS, "page": "pool"}
    if request.GET.get("partial"):
        return HttpResponse(render_to_string("notes/_pool_live.html", context))
    context["burst"] = request.GET.get("burst")
    return render(request, "notes/pool.html", context)


@require_POST
def burst(request: HttpRequest) -> HttpResponse:
    """Start a burst of concurrent slow requests to this server, then back to the pool page."""
    host = request.get_host()
    base_url = f"{request.scheme}://{host}/pool/work"
    started = live.start_burst(base_url, headers={"Host": host})
    return redirect(f"/pool?burst={'started' if started else 'running'}")


@never_cache
@require_GET
def work(request: HttpRequest) -> JsonResponse:
    """One request of a burst: hold a connection of the replica (or ``?on=primary``) a while."""
    try:
        hold = min(max(float(request.GET.get("hold", "0.5")), 0.0), MAX_HOLD_S)
    except ValueError:
        hold = 0.5
    if request.GET.get("on") == "primary":
        with use_primary():
            alias = Note.objects.all().db
    else:
        alias = Note.objects.all().db
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [hold])
    return JsonResponse({"alias": alias, "held_s": hold})
