"""How the pool opens, checks and resets psycopg connections."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import psycopg
from psycopg import pq

from django_poolconf import process
from django_poolconf.backends.credentials import ConnectParams, password_callable
from django_poolconf.backends.postgresql.redact import describe_target, redact
from django_poolconf.backends.postgresql.session import (
    BAD_STATUS,
    CONNECTION_OK,
    IDLE,
    RESET_SQL,
    ClientBaseline,
    FatalNotice,
    PooledConnection,
    collect_reset,
    forget_prepared,
    wait_for_socket,
)
from django_poolconf.errors import ConnectionFailed
from django_poolconf.redaction import SECRET_PARAMS, Secret

__all__ = ["PostgresHooks"]


class PostgresHooks:
    """How the pool opens, checks and resets psycopg connections."""

    dialect_url = "postgresql+psycopg://"

    def __init__(
        self,
        alias: str,
        conn_params: dict[str, Any],
        isolation_level: Any,
        *,
        read_timeout: float | None = None,
        credentials: ConnectParams | None = None,
        setup_sql: bytes | None = None,
    ) -> None:
        self.alias = alias
        self.setup_sql = setup_sql
        self.read_timeout = read_timeout
        params = dict(conn_params)
        # A callable PASSWORD and connect_params, called for each new connection.
        self.credentials = credentials
        if password_callable(params) is not None:
            del params["password"]
        # Kept apart, in a form no repr shows; revealed only to connect.
        self.secrets = {
            key: Secret(str(params.pop(key)))
            for key in SECRET_PARAMS.intersection(params)
            if params[key] is not None
        }
        self.conn_params = params
        self.isolation_level = isolation_level

    def _revealed(self) -> dict[str, Any]:
        return {key: secret.reveal() for key, secret in self.secrets.items()}

    def _params(self) -> dict[str, Any]:
        """The parameters of one new connection, secrets revealed (and made, if code makes them)."""
        params = {**self.conn_params, **self._revealed()}
        credentials = self.credentials
        return params if credentials is None else credentials(params)

    def connect(self) -> PooledConnection:
        params = self._params()
        try:
            connection = PooledConnection.connect(**params)
        except psycopg.OperationalError as error:
            failure = self._connect_failed(str(error), params)
        else:
            del params  # no frame of ours keeps the password
            if self.setup_sql is not None and not self._set_up(connection):
                connection.close()
                raise ConnectionFailed(
                    f"Could not set up a new connection for {self.alias!r}: "
                    f"{self.setup_sql.decode()} failed."
                )
            connection.named_cursors = []
            connection.generation = process.GENERATION.value
            connection.read_timeout = self.read_timeout
            connection.add_notice_handler(FatalNotice(connection))
            if self.isolation_level is not None:
                connection.isolation_level = self.isolation_level
            connection.isolation_default = connection.isolation_level
            connection.baseline = ClientBaseline(connection)
            connection.baseline_sql = RESET_SQL
            return connection
        # Raised outside the except block, so that the driver's message (which names
        # the host and port) is not kept as the exception's __context__ either; and
        # with no local of this frame holding the password, for error trackers.
        del params
        raise failure

    def _set_up(self, connection: PooledConnection) -> bool:
        """Run ``setup_sql`` on a new connection, outside any transaction."""
        result = connection.pgconn.exec_(self.setup_sql or b"")
        return bool(result.status == pq.ExecStatus.COMMAND_OK)

    def _connect_failed(self, failure: str, params: dict[str, Any]) -> ConnectionFailed:
        # As Django's own backend does, the error names the server tried: an operator
        # must see which one failed. Only the password is taken out.
        return ConnectionFailed(
            f"Could not open a connection for {self.alias!r} "
            f"({describe_target(params)}): {redact(failure, params)}"
        )

    def closed_while_idle(self, dbapi_connection: PooledConnection) -> bool:
        # A server that ends a session (pg_terminate_backend, a restart, a crash)
        # sends a FATAL error and closes the socket. libpq reads what has arrived
        # without waiting: a read that meets the end of the stream marks the
        # connection bad; if only the error has arrived yet, parsing it while idle
        # hands it to the notice handler as a notice. Unlike poll(), none of these
        # calls lets go of the GIL, which under threads costs a context switch.
        pgconn = dbapi_connection.pgconn
        try:
            pgconn.consume_input()
            pgconn.consume_input()
        except psycopg.OperationalError:
            return True
        if pgconn.status != CONNECTION_OK:
            return True
        pgconn.get_result()  # idle: parses what arrived, returns None
        return dbapi_connection.server_ended_session

    def ping(self, dbapi_connection: PooledConnection, timeout: float) -> bool:
        # SQLAlchemy's pre-ping has no deadline; this one is bounded by select().
        pgconn = dbapi_connection.pgconn
        deadline = time.monotonic() + timeout
        try:
            pgconn.send_query(b"SELECT 1")
            while pgconn.flush():
                if not wait_for_socket(pgconn.socket, deadline, write=True):
                    return False
            ok = False
            while True:
                while pgconn.is_busy():
                    if not wait_for_socket(pgconn.socket, deadline, write=False):
                        return False
                    pgconn.consume_input()
                result = pgconn.get_result()
                if result is None:
                    return ok
                ok = result.status == pq.ExecStatus.TUPLES_OK
        except (psycopg.Error, OSError):
            return False

    def reset(self, dbapi_connection: PooledConnection, policy: str) -> bool:
        pgconn = dbapi_connection.pgconn
        status = pgconn.transaction_status
        if status in BAD_STATUS:
            raise psycopg.OperationalError(
                "connection returned in the middle of a query"
            )
        named = dbapi_connection.named_cursors
        if named:
            # Named cursors are WITH HOLD outside a transaction and outlive it: close
            # what the borrower left open, so that psycopg's cursor objects agree with
            # the server (Django closes what it exhausts: usually nothing is left).
            dbapi_connection.named_cursors = []
            for cursor in named:
                if not cursor.closed:
                    # If it fails, the reset's CLOSE ALL closes it on the server.
                    with contextlib.suppress(psycopg.Error):
                        cursor.close()
            status = pgconn.transaction_status
        if status != IDLE:
            dbapi_connection.rollback()
        dbapi_connection.baseline.restore(dbapi_connection)
        # What fast paths read: psycopg's own fields, a property costs a call each.
        if (
            dbapi_connection._isolation_level is not dbapi_connection.isolation_default
            or dbapi_connection._read_only is not None
            or dbapi_connection._deferrable is not None
        ):
            self._restore_attributes(dbapi_connection)
        if policy == "rollback":
            return False
        if policy == "full":
            dbapi_connection.autocommit = True
            dbapi_connection.execute("DISCARD ALL")
            forget_prepared(dbapi_connection)
            backlog = getattr(dbapi_connection, "_notifies_backlog", None)
            if backlog:
                backlog.clear()
            return True
        # "auto": send the reset and go; the next checkout collects its result (see
        # complete_reset), by when it has arrived: no borrower waits for it.
        forget_prepared(dbapi_connection)
        pgconn.send_query(dbapi_connection.baseline_sql)
        dbapi_connection.reset_pending = True
        return False

    def complete_reset(
        self, dbapi_connection: PooledConnection, timeout: float
    ) -> bool | None:
        if not dbapi_connection.reset_pending:
            return True
        return collect_reset(dbapi_connection, timeout)

    @staticmethod
    def _restore_attributes(dbapi_connection: PooledConnection) -> None:
        # What a fresh connection has, for the next borrower. These are client-side
        # attributes: setting them costs no round trip. Autocommit is left as it is:
        # Django sets it on every checkout, and for_sqlalchemy() for SQLAlchemy.
        if dbapi_connection.isolation_level != dbapi_connection.isolation_default:
            dbapi_connection.isolation_level = dbapi_connection.isolation_default
        if dbapi_connection.read_only is not None:
            dbapi_connection.read_only = None
        if dbapi_connection.deferrable is not None:
            dbapi_connection.deferrable = None

    def for_sqlalchemy(self, dbapi_connection: PooledConnection) -> None:
        # SQLAlchemy begins transactions itself, on a non-autocommit connection; its
        # AUTOCOMMIT isolation level is applied after the checkout.
        if dbapi_connection._autocommit:
            dbapi_connection.autocommit = False

    async def async_connect(self) -> psycopg.AsyncConnection[Any]:
        # Django's adapters and cursor classes are for synchronous connections.
        params = {
            key: value
            for key, value in self._params().items()
            if key not in {"context", "cursor_factory"}
        }
        try:
            return await psycopg.AsyncConnection.connect(**params)
        except psycopg.OperationalError as error:
            failure = self._connect_failed(str(error), params)
        del params
        raise failure
