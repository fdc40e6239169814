"""An async view for tests/backends/test_scope.py."""

from __future__ import annotations

import asyncio

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from django_poolconf import pool_stats
from tests.testapp.models import Item


async def await_between_queries(request: HttpRequest) -> HttpResponse:
    """Read, await something that is not the database, read."""
    found = await Item.objects.acount()
    await asyncio.sleep(0.01)
    between = pool_stats("default").checked_out
    found += await Item.objects.acount()
    return JsonResponse({"between": between, "found": found})


urlpatterns = [path("scope/await/", await_between_queries)]
