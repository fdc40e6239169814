"""The read/write router's middleware: one routing scope per request, and cross-request pins.

Add ``"django_poolconf.middleware.ReadWriteMiddleware"`` near the top of
``MIDDLEWARE``. Each request then starts from a fresh routing state, restored when
the request ends, even when the view raises. With ``POOLCONF["ROUTER"]["PIN_SECONDS"]``
set, a response to a request that wrote carries a signed pin, as a cookie and as a
response header; a later request that sends either back has its reads of the
primaries it wrote kept off stale replicas.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection
from datetime import timedelta
from typing import Any, Final

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.core import signing
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponseBase

from django_poolconf.conf.router import RouterSettings, router_settings
from django_poolconf.routing import replicas
from django_poolconf.routing.scope import SCOPE, Pin, Scope

__all__ = ["ReadWriteMiddleware"]

# The name the module had before routing/ became a package: LOGGING configurations name it.
logger = logging.getLogger("django_poolconf.middleware")

#: Keeps pins from being valid for anything else signed with the project's key.
SIGNING_SALT: Final = "django_poolconf.pin"

GetResponse = Callable[[HttpRequest], HttpResponseBase]
AsyncGetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


class ReadWriteMiddleware:
    """Route each request from a fresh start, and pin clients after their writes.

    Sync and async capable. Put it above the middleware whose reads and writes it
    should cover (sessions, authentication).

    The pin is a token signed with ``SECRET_KEY``, valid for ``PIN_SECONDS``, that
    names the primaries the client wrote to and, in causal mode, the primary's WAL
    position after the writes. It is set as the cookie ``COOKIE_NAME`` (HttpOnly,
    SameSite=Lax, Secure on HTTPS) and in the response header ``HEADER_NAME``; an API
    client sends the header back. A token that is forged, expired or malformed is
    ignored.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse | AsyncGetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(
        self, request: HttpRequest
    ) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.async_mode:
            return self.__acall__(request)
        settings = router_settings()
        scope = Scope(_read_pins(request, settings))
        token = SCOPE.set(scope)
        try:
            response: HttpResponseBase = self.get_response(request)  # type: ignore[assignment]
            if scope.written and settings.pin_seconds is not None:
                positions = _positions(scope.written) if settings.causal else {}
                _pin(request, response, scope, positions, settings)
        finally:
            SCOPE.reset(token)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        settings = router_settings()
        scope = Scope(_read_pins(request, settings))
        token = SCOPE.set(scope)
        try:
            response: HttpResponseBase = await self.get_response(request)  # type: ignore[misc]
            if scope.written and settings.pin_seconds is not None:
                # On the thread where the view's ORM calls ran, whose connection to
                # the primary is still checked out.
                positions = (
                    await sync_to_async(_positions)(scope.written)
                    if settings.causal
                    else {}
                )
                _pin(request, response, scope, positions, settings)
        finally:
            SCOPE.reset(token)
        return response


def _read_pins(request: HttpRequest, settings: RouterSettings) -> dict[str, Pin]:
    if settings.pin_seconds is None:
        return {}
    # META, not request.headers, which copies every header on first use.
    header = "HTTP_" + settings.header_name.upper().replace("-", "_")
    token = request.META.get(header) or request.COOKIES.get(settings.cookie_name)
    if not token:
        return {}
    try:
        payload = signing.loads(
            token, salt=SIGNING_SALT, max_age=timedelta(seconds=settings.pin_seconds)
        )
    except signing.BadSignature:  # forged, or older than PIN_SECONDS
        return {}
    pins = {}
    if isinstance(payload, dict):
        for primary, entry in payload.items():
            if (
                isinstance(entry, list)
                and len(entry) == 2
                and isinstance(entry[0], int | float)
                and (entry[1] is None or isinstance(entry[1], int))
            ):
                pins[primary] = Pin(float(entry[0]), entry[1])
    return pins


def _positions(written: Collection[str]) -> dict[str, int | None]:
    """Each written primary's WAL position now: one round trip per primary."""
    positions: dict[str, int | None] = {}
    for primary in written:
        try:
            positions[primary] = replicas.wal_position(primary)
        except DatabaseError as error:
            # A plain pin for PIN_SECONDS instead: the client still reads its writes.
            logger.warning(
                "could not read the WAL position of %r (%s); pinning the client to it",
                primary,
                type(error).__name__,
            )
            positions[primary] = None
    return positions


def _pin(
    request: HttpRequest,
    response: HttpResponseBase,
    scope: Scope,
    positions: dict[str, int | None],
    settings: RouterSettings,
) -> None:
    assert settings.pin_seconds is not None
    now = time.time()
    expires = now + settings.pin_seconds
    # Pins the client came with still hold for the primaries it did not write now.
    entries: dict[str, list[Any]] = {
        primary: [pin.expires, pin.position]
        for primary, pin in scope.pins.items()
        if pin.expires > now
    }
    for primary in scope.written:
        entries[primary] = [expires, positions.get(primary)]
    token = signing.dumps(entries, salt=SIGNING_SALT)
    response.set_cookie(
        settings.cookie_name,
        token,
        max_age=math.ceil(settings.pin_seconds),
        secure=request.is_secure(),
        httponly=True,
        samesite="Lax",
    )
    response.headers[settings.header_name] = token
