"""The pooled PostgreSQL backend: ``ENGINE = "django_poolconf.backends.postgresql"``.

Django's own PostgreSQL wrapper, with connections borrowed from a SQLAlchemy pool.
Requires psycopg 3.
"""

from __future__ import annotations

import contextlib
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
from psycopg._preparing import PrepareManager
from psycopg.adapt import AdaptersMap

from django_poolconf import process
from django_poolconf.backends.base import (
    DISCONNECT,
    READ_ONLY,
    PooledDatabaseWrapperMixin,
)
from django_poolconf.errors import ConnectionFailed
from django_poolconf.pool import registry
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

#: What a returned connection gets under ``reset_on_return="auto"``, sent without
#: waiting for the result, which the next checkout collects.
RESET_SQL: Final = b"DISCARD ALL"
#: The same when Django's setup left settings to restore afterwards: ``DISCARD ALL``'s
#: parts, as it cannot run in the implicit transaction of a query of several
#: statements. ``SET SESSION AUTHORIZATION DEFAULT`` resets the role too.
RESET_PARTS_SQL: Final = (
    b"CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; "
    b"UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD PLANS; DISCARD TEMP; "
    b"DISCARD SEQUENCES"
)
#: What Django's setup (``init_connection_state()``, ``connection_created``
#: receivers) set in the session, as one statement that sets it again after
#: ``RESET_PARTS_SQL``: the connection's baseline, restored without a round trip.
_BASELINE_SQL: Final = b"""
SELECT 'SELECT ' || string_agg(format('set_config(%L, %L, false)', name, value), ', ')
FROM (
    SELECT name, current_setting(name) AS value FROM pg_settings WHERE source = 'session'
    UNION ALL
    SELECT 'role', current_user::text WHERE current_user <> session_user
) AS baseline
"""

_IDLE: Final = pq.TransactionStatus.IDLE
_CONNECTION_OK: Final = pq.ConnStatus.OK
_BAD_STATUS: Final = frozenset(
    {pq.TransactionStatus.ACTIVE, pq.TransactionStatus.UNKNOWN}
)
#: How long a reset's result may take when something needs the connection before
#: its next checkout (the checkout itself allows ``validation_timeout``).
RESET_TIMEOUT: Final = 5.0
_RESET_OK: Final = frozenset({pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK})


class PooledConnection(psycopg.Connection[Any]):
    """A psycopg connection owned by a pool.

    Its repr names no host, user or database, so pool logs never carry them.
    """

    # psycopg skips its "deleted while still open" warning for pool-owned connections.
    _pool = None
    isolation_default: Any = None
    named_cursors: list[Any]  # named cursors made by the current borrower
    server_ended_session: bool = False  # a FATAL error arrived while idle
    reset_pending: bool = False  # the reset sent on return, its result not read yet
    reset_failed: bool = False  # a result of the pending reset reported an error
    generation: int = 0  # process.GENERATION.value when it was opened
    #: What the connection had after it was opened and set up, restored on return:
    baseline_sql: bytes = RESET_SQL  # or RESET_PARTS_SQL and the setup's settings
    baseline: _ClientBaseline

    def _set_autocommit(self, value: bool) -> None:
        # Django sets autocommit on every checkout; it is usually what it was.
        if bool(value) is not self._autocommit:
            super()._set_autocommit(value)

    def wait(self, *args: Any, **kwargs: Any) -> Any:
        # Everything psycopg sends goes through here.
        if self.generation != process.GENERATION.value:
            # A forked child using what its parent opened (a SQLAlchemy connection
            # the forking thread held, left as the child leaves its block): the
            # parent's session must see nothing, not a COMMIT nor a ROLLBACK.
            raise psycopg.OperationalError(
                "this connection belongs to the parent process; a forked child "
                "must open its own"
            )
        # A reset still on its way is collected first: SQLAlchemy, for one, restores
        # an isolation level after its reset event, before the pool's next checkout.
        if self.reset_pending and not _collect_reset(self, RESET_TIMEOUT):
            raise psycopg.OperationalError("the connection's reset failed")
        return super().wait(*args, **kwargs)

    def close(self) -> None:
        if self.generation != process.GENERATION.value:
            # The parent's socket: closing it here would send Terminate on it.
            # psycopg's own finalizer leaves another process's connection alone.
            return
        super().close()

    def __repr__(self) -> str:
        status = pq.TransactionStatus(self.pgconn.transaction_status).name
        return f"<{type(self).__qualname__} [{status}] at 0x{id(self):x}>"


class _ClientBaseline:
    """The client side of a connection as its setup left it: what a borrower may change.

    psycopg keeps these on the connection object, not on the server, so no reset
    statement touches them: a row factory, a notice handler or a loader one borrower
    set would reach the next one.
    """

    __slots__ = (
        "adapters",
        "cursor_factory",
        "notice_handlers",
        "notify_handlers",
        "prepare_threshold",
        "prepared_max",
        "row_factory",
        "server_cursor_factory",
    )

    def __init__(self, connection: PooledConnection) -> None:
        """Take the connection's state as the baseline; its adapters become a child map."""
        self.row_factory = connection.row_factory
        self.cursor_factory = connection.cursor_factory
        self.server_cursor_factory = connection.server_cursor_factory
        self.notice_handlers = list(connection._notice_handlers)
        self.notify_handlers = list(connection._notify_handlers)
        self.prepare_threshold = connection._prepared.prepare_threshold
        self.prepared_max = connection._prepared.prepared_max
        # The connection gets a copy-on-write child of its adapters: a borrower that
        # registers a dumper or loader changes the child, which is then replaced.
        self.adapters = connection.adapters
        connection._adapters = AdaptersMap(self.adapters)

    def restore(self, connection: PooledConnection) -> None:
        """Put back what a borrower changed; no round trip, a few comparisons when nothing did."""
        if connection.row_factory is not self.row_factory:
            connection.row_factory = self.row_factory
        if connection.cursor_factory is not self.cursor_factory:
            connection.cursor_factory = self.cursor_factory
        if connection.server_cursor_factory is not self.server_cursor_factory:
            connection.server_cursor_factory = self.server_cursor_factory
        if connection._notice_handlers != self.notice_handlers:
            connection._notice_handlers[:] = self.notice_handlers
        if connection._notify_handlers != self.notify_handlers:
            connection._notify_handlers[:] = self.notify_handlers
        prepared = connection._prepared
        if (
            prepared.prepare_threshold != self.prepare_threshold
            or prepared.prepared_max != self.prepared_max
        ):
            prepared.prepare_threshold = self.prepare_threshold
            prepared.prepared_max = self.prepared_max
        adapters = connection._adapters
        if adapters is not None and _changed(adapters, self.adapters):
            connection._adapters = AdaptersMap(self.adapters)
        # Notifications psycopg received for a borrower that had no handler for them
        # (psycopg 3.2+ keeps them for its notifies() generator).
        backlog = getattr(connection, "_notifies_backlog", None)
        if backlog:
            backlog.clear()


def _changed(adapters: AdaptersMap, baseline: AdaptersMap) -> bool:
    # A child map shares its template's tables until a registration copies the one
    # it changes: a table that is not the template's has been changed.
    return (
        adapters._loaders[0] is not baseline._loaders[0]
        or adapters._loaders[1] is not baseline._loaders[1]
        or adapters._dumpers_by_oid[0] is not baseline._dumpers_by_oid[0]
        or adapters._dumpers_by_oid[1] is not baseline._dumpers_by_oid[1]
        or any(
            table is not baseline._dumpers[key]
            for key, table in adapters._dumpers.items()
        )
        or adapters.types._registry is not baseline.types._registry
    )


def _collect_reset(connection: PooledConnection, timeout: float) -> bool | None:
    """Read the results of the reset sent on return, for at most ``timeout`` seconds.

    True when it is done, False when it failed, None when it has not finished in time
    (it stays pending: a later call reads on). A connection the server closed
    meanwhile counts as done: nothing is left of its session, and the liveness check
    that follows the collection finds it closed.
    """
    pgconn = connection.pgconn
    deadline = time.monotonic() + timeout
    try:
        while pgconn.flush():
            if not _wait(pgconn.socket, deadline, write=True):
                return None
        while True:
            pgconn.consume_input()
            while pgconn.is_busy():
                if not _wait(pgconn.socket, deadline, write=False):
                    return None
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                break
            if result.status not in _RESET_OK:
                connection.reset_failed = True
        # Notifications that reached libpq before the reset's UNLISTEN are the last
        # borrower's: psycopg would hand them to the next one's handlers.
        while pgconn.notifies() is not None:
            pass
    except (psycopg.Error, OSError):
        connection.reset_pending = connection.reset_failed = False
        return True
    connection.reset_pending = False
    failed, connection.reset_failed = connection.reset_failed, False
    if pgconn.status != _CONNECTION_OK:
        return True
    return not failed and pgconn.transaction_status == _IDLE


def note_baseline(connection: PooledConnection, *, server: bool) -> None:
    """Remember the connection as Django's setup left it, to restore after each reset.

    Runs once per physical connection. With ``server``, for the ``"auto"`` policy,
    also reads what the setup set in the session: one round trip.
    """
    connection.baseline = _ClientBaseline(connection)
    if not server:
        return
    result = connection.pgconn.exec_(_BASELINE_SQL)
    if result.status != pq.ExecStatus.TUPLES_OK:
        raise psycopg.OperationalError(
            "could not read the session's settings after Django's setup"
        )
    restore = result.get_value(0, 0)
    connection.baseline_sql = (
        RESET_SQL if restore is None else RESET_PARTS_SQL + b"; " + bytes(restore)
    )


def _forget_prepared(connection: PooledConnection) -> None:
    """Empty psycopg's cache of prepared statements, after the server deallocated them.

    psycopg notices a ``DISCARD ALL`` or ``DEALLOCATE ALL`` only the first time it sees
    that text on a connection; afterwards its cache names statements the server has
    forgotten, and every borrower's prepared query fails. A new manager with the same
    limits keeps the two in step, and sends nothing.
    """
    prepared = connection._prepared
    if prepared._names or prepared._counts:
        fresh = PrepareManager()
        fresh.prepare_threshold = prepared.prepare_threshold
        fresh.prepared_max = prepared.prepared_max
        connection._prepared = fresh


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
            connection.generation = process.GENERATION.value
            connection.add_notice_handler(_FatalNotice(connection))
            if self.isolation_level is not None:
                connection.isolation_level = self.isolation_level
            connection.isolation_default = connection.isolation_level
            connection.baseline = _ClientBaseline(connection)
            connection.baseline_sql = RESET_SQL
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
        pgconn = dbapi_connection.pgconn
        status = pgconn.transaction_status
        if status in _BAD_STATUS:
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
        if status != _IDLE:
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
            _forget_prepared(dbapi_connection)
            backlog = getattr(dbapi_connection, "_notifies_backlog", None)
            if backlog:
                backlog.clear()
            return True
        # "auto": send the reset and go; the next checkout collects its result (see
        # complete_reset), by when it has arrived: no borrower waits for it.
        _forget_prepared(dbapi_connection)
        pgconn.send_query(dbapi_connection.baseline_sql)
        dbapi_connection.reset_pending = True
        return False

    def complete_reset(
        self, dbapi_connection: PooledConnection, timeout: float
    ) -> bool | None:
        if not dbapi_connection.reset_pending:
            return True
        return _collect_reset(dbapi_connection, timeout)

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


def _configures_timezone(wrapper_class: type[Any]) -> bool:
    """Whether ``wrapper_class`` sets the time zone as Django's wrapper does."""
    return (
        getattr(wrapper_class, "_configure_timezone", None)
        is postgresql_base.DatabaseWrapper._configure_timezone  # type: ignore[attr-defined]
    )


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
        registry.dispose_all()
        return super()._create_test_db(verbosity, autoclobber, keepdb)  # type: ignore[misc, no-any-return]

    def _clone_test_db(self, suffix: str, verbosity: int, keepdb: bool = False) -> None:
        registry.dispose_all()
        super()._clone_test_db(suffix, verbosity, keepdb)  # type: ignore[misc]

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        registry.dispose_all()
        super()._destroy_test_db(test_database_name, verbosity)  # type: ignore[misc]


class DatabaseWrapper(PooledDatabaseWrapperMixin, postgresql_base.DatabaseWrapper):
    """Django's PostgreSQL wrapper, with connections borrowed from a pool."""

    creation_class = DatabaseCreation

    _params_cache: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def get_connection_params(self) -> dict[str, Any]:
        if not self.is_pooled:
            params = super().get_connection_params()
            if "pool" in params and not params["pool"]:
                # Django before 5.1 hands OPTIONS["pool"] to psycopg: a plain
                # connection is what False asks for.
                del params["pool"]
            return params
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
        if self.timezone_name and _configures_timezone(type(self)):
            # Set at connect, Django finds the time zone right and needs no SET TIME
            # ZONE, and DISCARD ALL keeps it. Not when a subclass configures the
            # time zone its own way (or not at all).
            options.append(f"-c TimeZone={_escape_option(self.timezone_name)}")
        if options:
            params["options"] = " ".join(options)
        self._params_cache = (key, params)
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not self.is_pooled or self._connecting_unpooled:
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
            # What Django's setup of a new connection reads besides the parameters.
            self.settings_dict["OPTIONS"].get("assume_role"),
            self.timezone_name,
            type(self),
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

    def note_session_baseline(self, dbapi_connection: Any) -> None:
        note_baseline(
            dbapi_connection,
            server=self.get_pool_settings().reset_on_return == "auto",
        )

    def create_cursor(self, name: str | None = None) -> Any:
        cursor = super().create_cursor(name)
        if name and self._loan.record is not None:
            # A named cursor outside a transaction is declared WITH HOLD and outlives
            # it: if it is still open on return, the next borrower would inherit it.
            self.connection.named_cursors.append(cursor)
        return cursor
