"""The pooled PostgreSQL backend: ``ENGINE = "django_poolconf.backends.postgresql"``.

Django's own PostgreSQL wrapper, with connections borrowed from a SQLAlchemy pool.
Requires psycopg 3.
"""

from __future__ import annotations

import math
import os
import re
import select
import time
import weakref
from collections.abc import Hashable
from typing import Any, Final

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql import base as postgresql_base
from django.db.backends.postgresql import creation as postgresql_creation
from psycopg import pq

from django_poolconf import engines
from django_poolconf.backends.base import (
    DISCONNECT,
    READ_ONLY,
    PooledDatabaseWrapperMixin,
)
from django_poolconf.errors import ConnectionFailed
from django_poolconf.redaction import SECRET_PARAMS, Secret, fingerprint

__all__ = ["DatabaseCreation", "DatabaseWrapper", "PooledConnection"]

#: libpq options given to every pooled connection unless OPTIONS sets them. Without
#: them, a connection whose peer vanished (a dropped packet, a stalled proxy) blocks
#: for the kernel's defaults: minutes to hours.
TCP_DEFAULTS: Final[dict[str, int]] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # milliseconds
}

# Statements that change session state beyond a transaction: after one, the
# connection is fully reset (DISCARD ALL) before the next borrower gets it.
_SESSION_CHANGE: Final = re.compile(
    rb"""
      # a statement, after any comments (query tags), that changes the session
      (?:^|;)\s*(?:(?:/\*.*?\*/|--[^\n]*(?:\n|$))\s*)*
        (?:SET|RESET|LISTEN|PREPARE|LOAD|DECLARE)\b
    | \bset_config\s*\(
    | \bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(
    | \bCREATE\s+(?:OR\s+REPLACE\s+)?(?:(?:GLOBAL|LOCAL)\s+)?(?:TEMP|TEMPORARY)\b
    | \bINTO\s+(?:(?:GLOBAL|LOCAL)\s+)?(?:TEMP|TEMPORARY)\b
    | \bWITH\s+HOLD\b
    """,
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
_SESSION_CHANGE_STR: Final = re.compile(
    _SESSION_CHANGE.pattern.decode(), _SESSION_CHANGE.flags
)
# The full pattern costs about 25 us on a 350-character ORM query, on every execute.
# These cheap tests come first; the full pattern runs only when one of them hits.
_STATEMENT_START: Final = re.compile(
    rb"\s*(?:(?:/\*.*?\*/|--[^\n]*(?:\n|$))\s*)*"
    rb"(?:SET|RESET|LISTEN|PREPARE|LOAD|DECLARE)\b",
    re.IGNORECASE | re.DOTALL,
)
_STATEMENT_START_STR: Final = re.compile(
    _STATEMENT_START.pattern.decode(), _STATEMENT_START.flags
)

_IDLE: Final = pq.TransactionStatus.IDLE
_CONNECTION_OK: Final = pq.ConnStatus.OK
_BAD_STATUS: Final = frozenset(
    {pq.TransactionStatus.ACTIVE, pq.TransactionStatus.UNKNOWN}
)


def changes_session(query: object) -> bool:
    """Whether a statement may leave session state behind (``SET``, temp tables, ...)."""
    if isinstance(query, str):
        if _STATEMENT_START_STR.match(query) is not None:
            return True
        lowered = query.lower()
        # Words every other session-changing form contains; a statement after a
        # semicolon may begin with any of the keywords above.
        if (
            "temp" in lowered
            or "hold" in lowered
            or "set_config" in lowered
            or "advisory" in lowered
            or ";" in query
        ):
            return _SESSION_CHANGE_STR.search(query) is not None
        return False
    if isinstance(query, bytes):
        if _STATEMENT_START.match(query) is not None:
            return True
        lowered_bytes = query.lower()
        if (
            b"temp" in lowered_bytes
            or b"hold" in lowered_bytes
            or b"set_config" in lowered_bytes
            or b"advisory" in lowered_bytes
            or b";" in query
        ):
            return _SESSION_CHANGE.search(query) is not None
        return False
    # A psycopg.sql.Composable: too costly to render here; assume the worst.
    return True


class PooledConnection(psycopg.Connection[Any]):
    """A psycopg connection owned by a pool.

    Its repr names no host, user or database, so pool logs never carry them.
    """

    # psycopg skips its "deleted while still open" warning for pool-owned connections.
    _pool = None
    session_changed: bool = False
    isolation_default: Any = None
    named_cursors: list[Any]  # named cursors made by the current borrower
    server_ended_session: bool = False  # a FATAL error arrived while idle

    def _set_autocommit(self, value: bool) -> None:
        # Django sets autocommit on every checkout; it is usually what it was.
        if bool(value) is not self._autocommit:
            super()._set_autocommit(value)

    def __repr__(self) -> str:
        status = pq.TransactionStatus(self.pgconn.transaction_status).name
        return f"<{type(self).__qualname__} [{status}] at 0x{id(self):x}>"


class _FatalNotice:
    """Notes on its connection a FATAL error that arrived while the connection was idle."""

    __slots__ = ("connection",)

    def __init__(self, connection: PooledConnection) -> None:
        self.connection = weakref.ref(connection)

    def __call__(self, diagnostic: psycopg.errors.Diagnostic) -> None:
        if diagnostic.severity_nonlocalized in ("FATAL", "PANIC"):
            connection = self.connection()
            if connection is not None:
                connection.server_ended_session = True


#: changes_session()'s verdicts on recent query strings: an application's ORM
#: queries repeat, and a lookup costs a tenth of the tests. Bounded in entries and
#: in the length of what it keeps.
_VERDICTS: Final[dict[str, bool]] = {}
_VERDICTS_MAX: Final = 2048
_VERDICT_MAX_LENGTH: Final = 4096


def _verdict(query: str) -> bool:
    changed = changes_session(query)
    if len(query) <= _VERDICT_MAX_LENGTH:
        if len(_VERDICTS) >= _VERDICTS_MAX:
            _VERDICTS.clear()
        _VERDICTS[query] = changed
    return changed


class _SessionTrackingMixin:
    """A cursor that notes statements changing session state on its connection."""

    connection: PooledConnection

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        if query.__class__ is str:
            changed = _VERDICTS.get(query)
            if changed is None:
                changed = _verdict(query)
        else:
            changed = changes_session(query)
        if changed:
            self.connection.session_changed = True
        return super().execute(query, params, **kwargs)  # type: ignore[misc]

    def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> Any:
        if changes_session(query):
            self.connection.session_changed = True
        return super().executemany(query, params_seq, **kwargs)  # type: ignore[misc]


_tracking_cursors: dict[type, type] = {}


def _tracking_cursor(factory: type) -> type:
    tracking = _tracking_cursors.get(factory)
    if tracking is None:
        tracking = type(factory.__name__, (_SessionTrackingMixin, factory), {})
        tracking.__module__ = __name__
        _tracking_cursors[factory] = tracking
    return tracking


class PostgresHooks:
    """How the pool opens, checks and resets psycopg connections."""

    dialect_url = "postgresql+psycopg://"

    def __init__(
        self, alias: str, conn_params: dict[str, Any], isolation_level: Any
    ) -> None:
        self.alias = alias
        params = dict(conn_params)
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

    def connect(self) -> PooledConnection:
        try:
            connection = PooledConnection.connect(
                **self.conn_params, **self._revealed()
            )
        except psycopg.OperationalError as error:
            failure = str(error)
        else:
            connection.named_cursors = []
            connection.add_notice_handler(_FatalNotice(connection))
            if self.isolation_level is not None:
                connection.isolation_level = self.isolation_level
            connection.isolation_default = connection.isolation_level
            return connection
        # Raised outside the except block, so that the driver's message (which names
        # the host and port) is not kept as the exception's __context__ either.
        raise self._connect_failed(failure)

    def _connect_failed(self, failure: str) -> ConnectionFailed:
        # libpq names the host and port it tried; operators see them in the server's
        # and the network's logs, not in ours or in a traceback.
        return ConnectionFailed(
            f"Could not open a connection for {self.alias!r}: "
            f"{_redact(failure, {**self.conn_params, **self._revealed()})}"
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
        if pgconn.status != _CONNECTION_OK:
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
                if not _wait(pgconn.socket, deadline, write=True):
                    return False
            ok = False
            while True:
                while pgconn.is_busy():
                    if not _wait(pgconn.socket, deadline, write=False):
                        return False
                    pgconn.consume_input()
                result = pgconn.get_result()
                if result is None:
                    return ok
                ok = result.status == pq.ExecStatus.TUPLES_OK
        except (psycopg.Error, OSError):
            return False

    def reset(self, dbapi_connection: PooledConnection, policy: str) -> bool:
        if (
            dbapi_connection.pgconn.transaction_status == _IDLE
            and policy != "full"
            and not dbapi_connection.session_changed
            and not dbapi_connection.named_cursors
        ):
            # The common case: nothing to undo on the server, no round trip. Read
            # psycopg's own fields (its properties cost a call each) and go through
            # the public setters only for what a borrower changed.
            if (
                dbapi_connection._isolation_level
                is not dbapi_connection.isolation_default
                or dbapi_connection._read_only is not None
                or dbapi_connection._deferrable is not None
            ):
                self._restore_attributes(dbapi_connection)
            return False
        if dbapi_connection.pgconn.transaction_status in _BAD_STATUS:
            raise psycopg.OperationalError(
                "connection returned in the middle of a query"
            )
        # Named cursors are WITH HOLD outside a transaction and outlive it: close what
        # the borrower left open (Django closes what it exhausts: usually nothing).
        named = dbapi_connection.named_cursors
        dbapi_connection.named_cursors = []
        for cursor in named:
            if not cursor.closed:
                try:
                    cursor.close()
                except psycopg.Error:
                    dbapi_connection.session_changed = True  # DISCARD ALL closes it
        if dbapi_connection.pgconn.transaction_status != _IDLE:
            dbapi_connection.rollback()
        full = policy == "full" or (
            policy == "auto" and dbapi_connection.session_changed
        )
        if full:
            dbapi_connection.autocommit = True
            dbapi_connection.execute("DISCARD ALL")
        dbapi_connection.session_changed = False
        self._restore_attributes(dbapi_connection)
        return full

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
            for key, value in self.conn_params.items()
            if key not in {"context", "cursor_factory"}
        }
        try:
            return await psycopg.AsyncConnection.connect(**params, **self._revealed())
        except psycopg.OperationalError as error:
            failure = str(error)
        raise self._connect_failed(failure)


def _wait(fileno: int, deadline: float, *, write: bool) -> bool:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    poller = select.poll()
    poller.register(fileno, select.POLLOUT if write else select.POLLIN)
    return bool(poller.poll(remaining * 1000))


# psycopg's summary of several connection attempts: "- host: '...', port: '...', ...: "
_PSYCOPG_ATTEMPT: Final = re.compile(
    r"^- host: '[^']*', port: '[^']*'(?:, hostaddr: '[^']*')?: ", re.MULTILINE
)
_LIBPQ_TARGET: Final = re.compile(
    r'connection to server (?:at|on socket) "[^"]*"(?: \([^)]*\))?(?:, port \d+)? failed: '
)
# User and database names stay: they are no secret, and an operator needs them.
_SECRET_PARAMS: Final = ("password", "sslpassword", "host", "hostaddr")


def _redact(message: str, conn_params: dict[str, Any]) -> str:
    """Drop the host, port and password from a libpq error message."""
    message = _PSYCOPG_ATTEMPT.sub("", _LIBPQ_TARGET.sub("", message))
    for name in _SECRET_PARAMS:
        value = conn_params.get(name)
        if isinstance(value, str) and value:
            # Whole words only, so that a short host such as "db" is hidden without
            # mangling the words around it.
            pattern = rf"(?<![\w.-]){re.escape(value)}(?![\w.-])"
            message = re.sub(pattern, "***", message)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines) or "the server refused or did not answer"


def _escape_option(value: str) -> str:
    # libpq splits "options" on spaces; a backslash escapes the next character.
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


class _ApplicationName:
    """``django_poolconf:<alias>:<pid>``, with the pid of the process that connects.

    psycopg turns each connection parameter into text with ``str()`` as it connects, so
    a forked child names its own pid although it inherited the cached parameters and
    the pool's hooks. Not being a ``str``, it is left out of the pool's fingerprint.
    """

    __slots__ = ("alias",)

    def __init__(self, alias: str) -> None:
        self.alias = alias

    def __str__(self) -> str:
        return f"django_poolconf:{self.alias}:{os.getpid()}"

    def __repr__(self) -> str:
        return repr(str(self))


class DatabaseCreation(postgresql_creation.DatabaseCreation):
    """Test database creation that disposes of the pool first.

    PostgreSQL refuses to drop a database, or to copy it as a template, while
    connections to it are open, and idle pooled connections are open connections.
    """

    # Every pool, not only this alias's: a mirror, or a replica alias that points at
    # the primary in development, holds connections to the same database.

    def _create_test_db(
        self, verbosity: int, autoclobber: bool, keepdb: bool = False
    ) -> str:
        engines.dispose_all()
        return super()._create_test_db(verbosity, autoclobber, keepdb)  # type: ignore[misc, no-any-return]

    def _clone_test_db(self, suffix: str, verbosity: int, keepdb: bool = False) -> None:
        engines.dispose_all()
        super()._clone_test_db(suffix, verbosity, keepdb)  # type: ignore[misc]

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        engines.dispose_all()
        super()._destroy_test_db(test_database_name, verbosity)  # type: ignore[misc]


class DatabaseWrapper(PooledDatabaseWrapperMixin, postgresql_base.DatabaseWrapper):
    """Django's PostgreSQL wrapper, with connections borrowed from a pool."""

    creation_class = DatabaseCreation

    _params_cache: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def get_connection_params(self) -> dict[str, Any]:
        if not self.is_pooled:
            return super().get_connection_params()
        settings_dict = self.settings_dict
        # Django rebuilds the parameters on every connect; they only change when these
        # do, so the steady state reuses them.
        key = (
            settings_dict["NAME"],
            settings_dict["USER"],
            settings_dict["PASSWORD"],
            settings_dict["HOST"],
            settings_dict["PORT"],
            id(settings_dict["OPTIONS"]),
            self.timezone_name,
            self.get_pool_settings(),
        )
        cached = self._params_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        params = super().get_connection_params()
        settings = self.get_pool_settings()
        params.setdefault(
            "connect_timeout", max(2, math.ceil(settings.connect_timeout))
        )
        for name, value in TCP_DEFAULTS.items():
            params.setdefault(name, value)
        # libpq uses it only when neither OPTIONS nor PGAPPNAME name the application.
        params.setdefault("fallback_application_name", _ApplicationName(self.alias))
        options = [params["options"]] if params.get("options") else []
        if settings.statement_timeout is not None:
            options.append(f"-c statement_timeout={settings.statement_timeout}")
        if self.timezone_name:
            # Set at connect, Django finds the time zone right and needs no SET TIME
            # ZONE, and DISCARD ALL keeps it.
            options.append(f"-c TimeZone={_escape_option(self.timezone_name)}")
        if options:
            params["options"] = " ".join(options)
        params["cursor_factory"] = _tracking_cursor(params["cursor_factory"])
        self._params_cache = (key, params)
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not self.is_pooled:
            return super().get_new_connection(conn_params)
        # Django's get_new_connection() also sets self.isolation_level; the pool's
        # hooks apply the level to each new driver connection.
        self.isolation_level = self._configured_isolation_level()
        return self.checkout_connection(conn_params)

    def _configured_isolation_level(self) -> Any:
        value = self.settings_dict["OPTIONS"].get("isolation_level")
        if value is None:
            return psycopg.IsolationLevel.READ_COMMITTED
        try:
            return psycopg.IsolationLevel(value)
        except ValueError:
            raise ImproperlyConfigured(
                f"Invalid transaction isolation level {value} specified. Use one of "
                f"the psycopg.IsolationLevel values."
            ) from None

    def pool_fingerprint(self, conn_params: dict[str, Any]) -> Hashable:
        return (
            # The password hashed: the fingerprint is kept in the pool's registry.
            fingerprint(conn_params),
            id(conn_params.get("context")),
            conn_params.get("cursor_factory"),
            self.settings_dict["OPTIONS"].get("isolation_level"),
        )

    def make_pool_hooks(self, conn_params: dict[str, Any]) -> PostgresHooks:
        level = self.settings_dict["OPTIONS"].get("isolation_level")
        return PostgresHooks(
            self.alias,
            conn_params,
            None if level is None else self._configured_isolation_level(),
        )

    def classify_error(self, error: BaseException) -> str | None:
        if not isinstance(error, psycopg.Error):
            return None
        sqlstate = error.sqlstate or ""
        if sqlstate == "25006":  # read_only_sql_transaction
            # A standby reports in_hot_standby=on (PostgreSQL 14+) with no round trip:
            # only then did the primary move. A transaction the application made read
            # only is its own business. Older servers do not say: assume the worst.
            connection = self.connection
            standby = (
                None
                if connection is None
                else connection.info.parameter_status("in_hot_standby")
            )
            return None if standby == "off" else READ_ONLY
        if sqlstate.startswith("08") or sqlstate in {"57P01", "57P02", "57P03"}:
            return DISCONNECT
        connection = self.connection
        if connection is not None and (connection.closed or connection.broken):
            return DISCONNECT
        return None

    def connection_is_broken(self, dbapi_connection: Any) -> bool:
        # Closed or lost connections report UNKNOWN; ACTIVE is mid-query.
        return dbapi_connection.pgconn.transaction_status in _BAD_STATUS

    def mark_session_clean(self, dbapi_connection: Any) -> None:
        dbapi_connection.session_changed = False

    def create_cursor(self, name: str | None = None) -> Any:
        cursor = super().create_cursor(name)
        if name and self.is_pooled:
            # A named cursor outside a transaction is declared WITH HOLD and outlives
            # it: if it is still open on return, the next borrower would inherit it.
            self.connection.named_cursors.append(cursor)
        return cursor
