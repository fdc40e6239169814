"""Bounded probes of one SQLite database file: is it there, is it a database, how fast.

A probe never creates the file: its own connection opens it read-only
(``mode=ro``), and a missing file is ``unreachable``. A database file is never
``in_recovery``; it is ``read_only`` when this process may not write it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

from sqlalchemy import exc as sa_exc

from django_poolconf.backends.probes import Failure, ProbeResult
from django_poolconf.errors import PoolError
from django_poolconf.pool.lender import Lender

__all__ = ["probe_pooled", "probe_server"]

#: Reads the file's first page: a file that is not a database fails it.
_STATE_QUERY: Final = "SELECT count(*) FROM sqlite_master"


def probe_server(
    params: Mapping[str, Any],
    deadline: float,
    *,
    server_view: bool = False,
    credentials: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
) -> ProbeResult:
    """Probe with a read-only connection of its own, opened for this probe and closed.

    ``server_view`` is ignored: a file has no server to report on.
    """
    path = _path(params.get("database"))
    if path is None:
        return _failed("unreachable", "the database is not a file")
    uri = f"file:{quote(path)}?mode=ro"
    timeout = max(deadline - time.monotonic(), 0.0)
    try:
        started = time.perf_counter()
        connection = sqlite3.connect(
            uri, uri=True, timeout=timeout, check_same_thread=False
        )
        try:
            return _measure(connection, path, started)
        finally:
            connection.close()
    except sqlite3.Error as error:
        return _failed(_failure(deadline), str(error))


def probe_pooled(
    lender: Lender,
    params: Mapping[str, Any],
    deadline: float,
    *,
    server_view: bool = False,
    credentials: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
) -> ProbeResult:
    """Probe with an idle connection of the alias's pool, and give it back.

    With none idle it probes with a connection of its own (:func:`probe_server`). A
    connection whose probe failed is closed, not pooled.
    """
    try:
        record = lender.borrow_idle(max(deadline - time.monotonic(), 0.0))
    except (PoolError, sa_exc.SQLAlchemyError, sqlite3.Error) as error:
        return _failed(_failure(deadline), str(error))
    if record is None:
        return probe_server(params, deadline)
    result: ProbeResult | None = None
    try:
        connection: Any = record.dbapi_connection
        result = _measure(connection, connection.path, time.perf_counter())
        return result
    except sqlite3.Error as error:
        return _failed(_failure(deadline), str(error))
    finally:
        if result is not None and result.failure is None:
            lender.checkin(record)
        else:
            lender.discard(record, "its health probe failed")


def _measure(connection: sqlite3.Connection, path: str, started: float) -> ProbeResult:
    sqlite3.Connection.execute(connection, _STATE_QUERY).fetchone()
    return ProbeResult(
        finished_at=time.monotonic(),
        latency_ms=(time.perf_counter() - started) * 1000,
        in_recovery=False,
        read_only=not os.access(path, os.W_OK),
    )


def _path(database: object) -> str | None:
    """The file of a ``database`` parameter (a path or a ``file:`` URI)."""
    if isinstance(database, Path):
        return str(database)
    if not isinstance(database, str) or not database:
        return None
    if database.startswith("file:"):
        return unquote(urlsplit(database).path) or None
    return database


def _failure(deadline: float) -> Failure:
    return "timeout" if time.monotonic() >= deadline else "unreachable"


def _failed(failure: Failure, error: str | None) -> ProbeResult:
    return ProbeResult(finished_at=time.monotonic(), failure=failure, error=error)
