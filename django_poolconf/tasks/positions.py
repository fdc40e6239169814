"""The causal positions a task carries from where it is enqueued to where it runs.

At enqueue time, :func:`record` notes, for each primary the current request or task
wrote to (or that the client's pin names), the primary's WAL position: a reader that
has replayed it sees those writes. Where the task runs, :func:`enter` opens the
routing scope of the task with those positions as pins: its reads of each of those
primaries go to a replica that has replayed the position, else to the primary, as
the reads of a client pinned in causal mode do.

The positions travel as a dict, JSON as it is: primary alias to the WAL position as
PostgreSQL writes it (``"16/B374D848"``), or to ``None``, "read the primary".
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from contextvars import Token
from typing import Final

from django.db import DatabaseError, connections

from django_poolconf.routing import replicas
from django_poolconf.routing.scope import SCOPE, Pin, Scope

__all__ = ["Positions", "enter", "record", "scope_for"]

logger = logging.getLogger(__name__)

#: Primary alias to WAL position (``"16/B374D848"``), or ``None``: read the primary.
Positions = dict[str, str | None]

#: A task's pins hold for the whole task, however late it runs.
_FOR_THE_WHOLE_TASK: Final = math.inf


def record() -> Positions:
    """The positions a task enqueued now must read at least: one per primary.

    For each primary the current request or task wrote to, and each the client's pin
    names (with ``PIN_SECONDS``): its WAL position now, one round trip on this
    thread's connection to it (a causal pin's own position needs none). ``None``,
    so that the task reads the primary, when the position cannot be had: inside
    ``atomic()`` on the primary (the writes commit later, past any position read
    now: enqueue in :func:`transaction.on_commit() <django.db.transaction.on_commit>`),
    in async code, when the query fails, or on a database other than PostgreSQL.
    An empty dict when nothing was written: the task reads like a fresh request.
    """
    scope = SCOPE.get()
    if scope is None:
        return {}
    now = time.time()
    recorded: Positions = {}
    for primary, pin in scope.pins.items():
        # A pin signed before DATABASES lost its alias is ignored, as the router does.
        if pin.expires > now and primary in connections.settings:
            recorded[primary] = (
                _position_now(primary)
                if pin.position is None
                else replicas.format_lsn(pin.position)
            )
    for primary in scope.written:
        recorded[primary] = _position_now(primary)
    return recorded


def _position_now(primary: str) -> str | None:
    if connections[primary].in_atomic_block or _in_event_loop():
        return None
    try:
        position = replicas.wal_position(primary)
    except DatabaseError as error:
        logger.warning(
            "could not read the WAL position of %r (%s); the task reads the primary",
            primary,
            replicas.describe_error(error),
        )
        return None
    return None if position is None else replicas.format_lsn(position)


def _in_event_loop() -> bool:
    # Django forbids queries from async code; aenqueue() records in a thread instead.
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def scope_for(positions: object) -> Scope:
    """The routing scope of a task that carries ``positions``, as :func:`record` made them.

    A fresh scope, as a request's, with one pin per primary. What is not a string key
    is ignored; a position that is not a WAL position reads the primary.
    """
    pins: dict[str, Pin] = {}
    if isinstance(positions, Mapping):
        for primary, text in positions.items():
            if isinstance(primary, str):
                pins[primary] = Pin(_FOR_THE_WHOLE_TASK, _parse(text))
    return Scope(pins)


def _parse(text: object) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        return replicas.parse_lsn(text)
    except ValueError:
        return None


def enter(positions: object) -> Token[Scope | None]:
    """Route what follows as a task that carries ``positions``, until ``SCOPE.reset(token)``.

    For a worker's hooks: call it before the task runs, and reset
    :data:`~django_poolconf.routing.scope.SCOPE` with the token after it.
    """
    return SCOPE.set(scope_for(positions))
