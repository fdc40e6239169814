"""How the pool opens, checks and resets mysqlclient connections.

The reset on return, by ``reset_on_return``:

- ``"auto"`` and ``"full"``: ``COM_RESET_CONNECTION`` (one round trip, by the
  returning thread), then the session's setup (``USE`` of the configured database,
  ``SET ROLE`` back to the role at connect, ``SET NAMES``,
  ``OPTIONS["init_command"]``, Django's isolation level and ``SQL_AUTO_IS_NULL``, the
  pool's ``statement_timeout``) sent
  without waiting; the next checkout reads its result, which has arrived by then.
  ``"full"`` also has Django set the connection up again at the next checkout, as
  ``"auto"`` does when a :data:`~django_poolconf.signals.physical_connection_created`
  receiver is connected (what it set is not known, so it runs again).
- ``"rollback"``: a rollback when a transaction is open, nothing else: the session's
  variables, temporary tables and locks stay for the next borrower.

Under each, a client character set a borrower changed is set back first.
"""

from __future__ import annotations

from typing import Any, Final

import MySQLdb

from django_poolconf import process
from django_poolconf.backends.credentials import ConnectParams, password_callable
from django_poolconf.backends.mysql.session import (
    PooledConnection,
    in_transaction,
    reset_session,
    wait_readable,
)
from django_poolconf.errors import ConnectionFailed
from django_poolconf.redaction import SECRET_PARAMS, Secret
from django_poolconf.signals import physical_connection_created

__all__ = ["MySQLHooks"]

#: mysqlclient's names for what the redaction calls secret.
_SECRETS = SECRET_PARAMS | {"passwd"}


class MySQLHooks:
    """How the pool opens, checks and resets mysqlclient connections."""

    dialect_url = "mysql+mysqldb://"

    def __init__(
        self,
        alias: str,
        conn_params: dict[str, Any],
        setup_sql: bytes,
        *,
        statement_timeout: int | None = None,
        credentials: ConnectParams | None = None,
    ) -> None:
        self.alias = alias
        self.setup_sql = setup_sql
        self.statement_timeout = statement_timeout
        params = dict(conn_params)
        self.credentials = credentials
        if password_callable(params) is not None:
            del params["password"]
        # Kept apart, in a form no repr shows; revealed only to connect.
        self.secrets = {
            key: Secret(str(params.pop(key)))
            for key in _SECRETS.intersection(params)
            if params[key] is not None
        }
        self.conn_params = params

    def _params(self) -> dict[str, Any]:
        params = {
            **self.conn_params,
            **{key: secret.reveal() for key, secret in self.secrets.items()},
        }
        credentials = self.credentials
        return params if credentials is None else credentials(params)

    def connect(self) -> PooledConnection:
        params = self._params()
        try:
            connection = PooledConnection(**params)
        except MySQLdb.Error as error:
            failure = ConnectionFailed(
                f"Could not open a connection for {self.alias!r}: "
                f"{_describe(error, params)}"
            )
        else:
            connection.generation = process.GENERATION.value
            connection.user = str(params.get("user", ""))
            connection.database = params.get("database") or params.get("db")
            password = params.get("password", params.get("passwd"))
            connection.secret = None if password is None else Secret(str(password))
            del params, password
            try:
                restore = _restore_sql(connection)
            except MySQLdb.Error as error:
                connection.close()
                raise ConnectionFailed(
                    f"Could not read the role of a new connection for "
                    f"{self.alias!r}: {_describe(error, {})}"
                ) from None
            # First, as at connect: then the init_command, which may change them.
            connection.setup_sql = b"; ".join([*restore, self.setup_sql])
            if self.statement_timeout is not None:
                timeout_sql = _statement_timeout_sql(connection, self.statement_timeout)
                try:
                    connection.query(timeout_sql)
                except MySQLdb.Error as error:
                    connection.close()
                    raise ConnectionFailed(
                        f"Could not set statement_timeout on a new connection for "
                        f"{self.alias!r}: {_describe(error, {})}"
                    ) from None
                # Kept through each reset: sent again with the setup.
                connection.setup_sql += b"; " + timeout_sql
            # Django's bytes workaround (its get_new_connection()).
            if connection.encoders.get(bytes) is bytes:
                connection.encoders.pop(bytes)
            return connection
        # Raised outside the except block, with no local holding the password.
        del params
        raise failure

    def closed_while_idle(self, dbapi_connection: PooledConnection) -> bool:
        # An idle connection's socket has nothing to read unless the server closed
        # it (a restart, KILL, wait_timeout): one system call, no round trip.
        return wait_readable(dbapi_connection, 0)

    def ping(self, dbapi_connection: PooledConnection, timeout: float) -> bool:
        # mysqlclient's ping() has no deadline of its own; this one is bounded.
        try:
            dbapi_connection.send_query(b"DO 1")
            if not wait_readable(dbapi_connection, timeout):
                return False
            dbapi_connection.read_query_result()
        except MySQLdb.Error:
            return False
        return True

    def reset(self, dbapi_connection: PooledConnection, policy: str) -> bool:
        dbapi_connection.restore_charset()
        if policy == "rollback":
            if in_transaction(dbapi_connection) is not False:
                dbapi_connection.rollback()
            return False
        reset_session(dbapi_connection)
        dbapi_connection.send_query(dbapi_connection.setup_sql)
        dbapi_connection.setup_pending = True
        return policy == "full" or physical_connection_created.has_listeners()

    def complete_reset(
        self, dbapi_connection: PooledConnection, timeout: float
    ) -> bool | None:
        if not dbapi_connection.setup_pending:
            return True
        if not wait_readable(dbapi_connection, timeout):
            return None
        dbapi_connection.setup_pending = False
        try:
            dbapi_connection.read_query_result()
            dbapi_connection.store_result()  # an init_command may return rows
            while dbapi_connection.next_result() == 0:
                dbapi_connection.store_result()
        except MySQLdb.Error:
            return False
        return True

    def for_sqlalchemy(self, dbapi_connection: PooledConnection) -> None:
        # SQLAlchemy begins transactions itself, on a non-autocommit connection.
        if dbapi_connection.get_autocommit():
            dbapi_connection.autocommit(False)

    async def async_connect(self) -> Any:
        raise ConnectionFailed(
            f"get_async_engine({self.alias!r}) is for PostgreSQL only: the MySQL "
            "backend has no asyncio driver."
        )


#: CURRENT_ROLE() of a server without roles (MySQL 5.7): ER_SP_DOES_NOT_EXIST.
_NO_ROLES: Final = 1305


def _restore_sql(connection: PooledConnection) -> list[bytes]:
    """What puts back the database and the role the connection has now.

    Neither ``COM_RESET_CONNECTION`` nor ``COM_CHANGE_USER`` undoes ``USE`` (the
    former) or ``SET ROLE`` (both): sent again after each reset, with the setup.
    """
    statements = []
    if connection.database:
        statements.append(f"USE {_quote(str(connection.database))}".encode())
    try:
        connection.query(b"SELECT CURRENT_ROLE()")
    except MySQLdb.Error as error:
        if error.args[:1] != (_NO_ROLES,):
            raise
        return statements
    rows = connection.store_result().fetch_row()
    role = rows[0][0] if rows else None
    if isinstance(role, bytes):
        role = role.decode()
    if role is None or role == "NONE":  # none: MariaDB's NULL, MySQL's NONE
        statements.append(b"SET ROLE NONE")
    elif role.startswith("`"):  # MySQL's: `name`@`host`, each quoted, comma separated
        statements.append(f"SET ROLE {role}".encode())
    else:  # MariaDB's: one name as it is
        statements.append(f"SET ROLE {_quote(role)}".encode())
    return statements


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _statement_timeout_sql(connection: PooledConnection, milliseconds: int) -> bytes:
    """What bounds each statement: MariaDB's max_statement_time, MySQL's max_execution_time.

    MariaDB's counts seconds and bounds every statement; MySQL's counts milliseconds
    and bounds read-only SELECT statements only.
    """
    if "mariadb" in connection.get_server_info().lower():
        return f"SET SESSION max_statement_time = {milliseconds / 1000:g}".encode()
    return f"SET SESSION max_execution_time = {milliseconds:d}".encode()


def _describe(error: MySQLdb.Error, params: dict[str, Any]) -> str:
    """The driver's message, with no password in it."""
    text = str(error.args[1]) if len(error.args) > 1 else str(error)
    for key in _SECRETS:
        value = params.get(key)
        if value:
            text = text.replace(str(value), "********")
    return text
