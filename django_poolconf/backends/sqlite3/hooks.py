"""How the pool opens, checks and resets sqlite3 connections."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from django.db.utils import NotSupportedError
from sqlalchemy.dialects import registry as dialects
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

from django_poolconf.backends.credentials import ConnectParams
from django_poolconf.backends.sqlite3.session import (
    Baseline,
    PooledConnection,
    file_identity,
    main_file,
    reset,
)
from django_poolconf.errors import ConnectionFailed

__all__ = ["PooledSQLiteDialect", "SQLiteHooks"]


class PooledSQLiteDialect(SQLiteDialect_pysqlite):
    """SQLAlchemy's pysqlite dialect, minus its own setup of each new connection.

    Its ``on_connect()`` registers ``regexp()`` and ``floor()``, which would replace
    Django's ``REGEXP`` (which the ORM's ``__regex`` lookups use) on a connection
    Django set up: Django's setup is the one a pooled connection gets.
    """

    supports_statement_cache = True

    def on_connect(self) -> None:  # type: ignore[override]
        return None


dialects.register(
    "sqlite.django_poolconf",
    __name__.rsplit(".", 1)[0] + ".hooks",
    "PooledSQLiteDialect",
)


class SQLiteHooks:
    """How the pool opens, checks and resets sqlite3 connections.

    ``open_connection`` is Django's ``get_new_connection()`` of a wrapper of the
    alias's settings: Django's setup of a new connection (its SQL functions, its
    PRAGMAs, ``OPTIONS["init_command"]``) runs once per physical connection.
    """

    dialect_url = "sqlite+django_poolconf://"

    def __init__(
        self,
        alias: str,
        conn_params: dict[str, Any],
        open_connection: Callable[[dict[str, Any]], Any],
        *,
        credentials: ConnectParams | None = None,
    ) -> None:
        self.alias = alias
        self.conn_params = {**conn_params, "factory": PooledConnection}
        self.open_connection = open_connection
        self.credentials = credentials

    def connect(self) -> PooledConnection:
        params = dict(self.conn_params)
        if self.credentials is not None:
            params = self.credentials(params)
        try:
            connection: PooledConnection = self.open_connection(params)
        except sqlite3.Error as error:
            # SQLite's messages name no file ("unable to open database file").
            raise ConnectionFailed(
                f"Could not open a connection for {self.alias!r}: {error}"
            ) from None
        connection.path = main_file(connection)
        connection.identity = file_identity(connection.path)
        connection.baseline = Baseline(connection)
        return connection

    def closed_while_idle(self, dbapi_connection: PooledConnection) -> bool:
        # No server to close it: the file it has open may have been replaced or
        # removed (a deploy that swaps it, a test that deletes it), and a connection
        # to the old file would read and write data nobody else sees.
        return file_identity(dbapi_connection.path) != dbapi_connection.identity

    def ping(self, dbapi_connection: PooledConnection, timeout: float) -> bool:
        if self.closed_while_idle(dbapi_connection):
            return False
        try:
            dbapi_connection.execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def for_sqlalchemy(self, dbapi_connection: PooledConnection) -> None:
        # SQLAlchemy expects the driver's transaction handling as sqlite3 makes it
        # (Django's checkouts turn it into autocommit).
        baseline = dbapi_connection.baseline
        assert baseline is not None
        if dbapi_connection.isolation_level != baseline.isolation_level:
            dbapi_connection.isolation_level = baseline.isolation_level  # type: ignore[assignment]

    def reset(self, dbapi_connection: PooledConnection, policy: str) -> bool:
        # Local and cheap (no I/O in the steady state): done now, nothing to collect.
        reset(dbapi_connection, policy)
        return False

    def complete_reset(
        self, dbapi_connection: PooledConnection, timeout: float
    ) -> bool | None:
        return True

    async def async_connect(self) -> Any:
        raise NotSupportedError(
            f"get_async_engine({self.alias!r}): the SQLite backend has no asyncio "
            "driver; use get_engine()."
        )
