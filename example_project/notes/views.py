from __future__ import annotations

from dataclasses import asdict
from typing import Any, cast

from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods
from sqlalchemy.pool import QueuePool

from django_poolconf import get_engine
from django_poolconf.conf import is_pooled
from django_poolconf.replicas import replica_states
from example_project.notes.forms import NoteForm
from example_project.notes.models import Note

LATEST_NOTES = 50


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
    notes = Note.objects.all()[:LATEST_NOTES]
    return render(request, "notes/index.html", {"form": form, "notes": notes})


@require_GET
def api_notes(request: HttpRequest) -> JsonResponse:
    """The latest notes as JSON."""
    notes = [
        {"id": note.pk, "text": note.text, "created": note.created.isoformat()}
        for note in Note.objects.all()[:LATEST_NOTES]
    ]
    return JsonResponse({"notes": notes})


@never_cache
@require_GET
def pool(request: HttpRequest) -> JsonResponse:
    """For each pooled alias: which server answered, and its pool's numbers; and the router's view.

    The query runs through Django's connection for the alias, so ``checked_out``
    counts the connection this request holds; the request's end returns it.
    ``router`` says where this request's reads of notes go, and what the router knows
    of each replica.
    """
    read_from = Note.objects.all().db
    aliases: dict[str, Any] = {}
    for alias in connections:
        settings_dict = connections.settings[alias]
        if not is_pooled(settings_dict):
            continue
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT pg_is_in_recovery(), inet_server_port()")
            in_recovery, port = cursor.fetchone()
        # django-poolconf always builds a QueuePool; Engine.pool is typed as any Pool.
        queue_pool = cast(QueuePool, get_engine(alias).pool)
        aliases[alias] = {
            "replica_of": settings_dict.get("REPLICA_OF"),
            "server": {"in_recovery": in_recovery, "port": port},
            "pool_size": queue_pool.size(),
            "checked_in": queue_pool.checkedin(),
            "checked_out": queue_pool.checkedout(),
            "overflow": queue_pool.overflow(),
        }
    replicas = {alias: asdict(state) for alias, state in replica_states().items()}
    return JsonResponse(
        {"aliases": aliases, "router": {"read_from": read_from, "replicas": replicas}}
    )
