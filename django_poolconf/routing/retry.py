"""Reads retried on the primary when the replica fails under them.

The router watches what each replica's connection executes (a Django execute
wrapper, :func:`watch_replica`). When a statement fails because the replica is gone
(its connection lost, the server shut down) or because the standby cancelled it to
replay WAL (a recovery conflict), the replica's breaker opens; and when nothing of
the statement can have reached the caller or the database, it runs once more on the
replica's primary, in the caller's own cursor, so that the caller gets its rows:

* it is a single statement (never ``executemany()``), a plain ``SELECT`` (or
  ``VALUES``, ``TABLE``, ``SHOW``), sent outside a transaction (no ``atomic()``
  on the replica, autocommit on), and it is its ``execute()`` that failed: rows a
  server-side cursor has already handed out are never fetched again;
* the primary's connection is not inside ``atomic()`` either, so that the read does
  not join a transaction of the caller's.

It runs in a read-only transaction: a ``SELECT`` that writes (``nextval()``, a
function that inserts), which the standby refused, is refused by the primary too.

The primary, not another replica: it is at least as fresh as anything the request
or task has read, and the rest of its reads go there too, as after any failure of
its replica. The success path costs nothing: the watcher is the one the breaker
already needed, and its ``try`` costs no time until something fails.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, Final

from django.db import DatabaseError, connections

from django_poolconf.backends.base import DISCONNECT
from django_poolconf.routing import replicas
from django_poolconf.routing.scope import FORCED, REPLICA, SCOPE

__all__ = ["watch_replica"]

logger = logging.getLogger(__name__)

#: The first words of the statements that may run again elsewhere, after any
#: parentheses (Django's ``union()``). Not ``WITH``: a CTE may modify data.
_PLAIN_READS: Final = ("SELECT", "VALUES", "TABLE", "SHOW")


def watch_replica(
    execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: Any
) -> Any:
    """Open a replica's breaker when a statement fails there, and retry a plain read.

    A Django execute wrapper, installed by the router on the connection of each
    replica it picks. The retry runs on the replica's primary, through the rest of
    the execute wrappers and Django's error handling, as the primary's statement.

    :raises django.db.DatabaseError: the replica's error when the statement is not
        retried, or the primary's when the retry fails too.
    """
    try:
        return execute(sql, params, many, context)
    except DatabaseError as error:
        wrapper = context["connection"]
        kind = wrapper.classify_read_failure(error.__cause__ or error)
        if kind is None:
            raise
        replicas.record_failure(wrapper.alias, error)
        fallback = _fallback(wrapper, sql, many)
        if fallback is None or not _move(context, wrapper, fallback, error):
            raise
        if kind == DISCONNECT:
            # Closed now, not at the request's end: every older connection of the
            # pool is replaced, and a later use of the alias connects anew.
            wrapper.close()
        _read_primary_from_now_on(wrapper.alias, fallback.alias)
        logger.warning(
            "read on replica %r failed (%s); retried on %r",
            wrapper.alias,
            replicas.describe_error(error),
            fallback.alias,
        )
        with _read_only(fallback):
            return execute(sql, params, many, context)


@contextlib.contextmanager
def _read_only(fallback: Any) -> Iterator[None]:
    """Run the retry in a read-only transaction: what the standby would have refused
    (``nextval()``, a function that writes, ``SELECT ... INTO``), the primary refuses
    too, rather than write."""
    driver = fallback.connection
    driver.cursor().execute("START TRANSACTION READ ONLY")
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):  # its connection may be gone
            driver.cursor().execute("ROLLBACK")
        raise
    driver.cursor().execute("COMMIT")


def _fallback(wrapper: Any, sql: Any, many: bool) -> Any:
    """The primary's connection, when the failed statement may run there; else ``None``."""
    if many or wrapper.in_atomic_block or not wrapper.autocommit:
        return None
    if not isinstance(sql, str) or not sql.lstrip(" \t\r\n(")[:6].upper().startswith(
        _PLAIN_READS
    ):
        return None
    # Every alias the router picks as a replica has a primary.
    fallback = connections[wrapper.get_pool_settings().replica_of]
    if fallback.in_atomic_block:
        return None
    return fallback


def _move(context: Any, wrapper: Any, fallback: Any, error: BaseException) -> bool:
    """Point the caller's cursor at a new cursor of ``fallback``; whether it could."""
    cursor = context["cursor"]  # Django's CursorWrapper, which the caller holds
    try:
        fresh = fallback.cursor_like(cursor.cursor)
        in_autocommit = fallback.get_autocommit()
    except DatabaseError as fallback_error:
        logger.warning(
            "read on replica %r failed (%s); not retried on %r: %s",
            wrapper.alias,
            replicas.describe_error(error),
            fallback.alias,
            replicas.describe_error(fallback_error),
        )
        return False
    if not in_autocommit or fallback.session_in_transaction():
        # A transaction of the caller's (a raw BEGIN, with autocommit on): the read
        # would join it, and the read-only retry's COMMIT would end it.
        fresh.close()
        return False
    with contextlib.suppress(Exception):  # its connection may be gone
        cursor.cursor.close()
    # In checkout_scope = "transaction" a cursor is counted open on its connection
    # until closed: the replica's cursor is closed now, and the caller's close()
    # closes the primary's cursor, which the caller's wrapper becomes.
    closed_epoch = getattr(cursor, "scope_epoch", -1)
    cursor.__class__ = type(fresh)
    cursor.scope_epoch = getattr(fresh, "scope_epoch", -1)
    fresh.scope_epoch = -1
    if closed_epoch >= 0:
        wrapper.cursor_closed(closed_epoch)
    cursor.cursor = fresh.cursor
    cursor.db = context["connection"] = fallback
    return True


def _read_primary_from_now_on(replica: str, primary: str) -> None:
    # What the router would decide at the next read anyway while the breaker is
    # open; kept for the rest of the scope even if the breaker closes meanwhile,
    # so that no later read of it sees data older than the retry saw.
    scope = SCOPE.get()
    if scope is None:
        return
    choices = scope.forced if FORCED.get() == REPLICA else scope.targets
    if choices.get(primary) == replica:
        choices[primary] = primary
