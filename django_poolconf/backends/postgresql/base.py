"""The pooled PostgreSQL backend: ``ENGINE = "django_poolconf.backends.postgresql"``.

Django's own PostgreSQL wrapper, with connections borrowed from a SQLAlchemy pool.
Requires psycopg 3.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable
from typing import Any, Final

import psycopg
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql import base as postgresql_base
from django.db.backends.postgresql import creation as postgresql_creation

from django_poolconf.backends.base import (
    DISCONNECT,
    READ_ONLY,
    RECOVERY_CONFLICT,
    PooledDatabaseWrapperMixin,
)
from django_poolconf.backends.credentials import password_callable
from django_poolconf.backends.postgresql import probes
from django_poolconf.backends.postgresql.client import DatabaseClient
from django_poolconf.backends.postgresql.hooks import PostgresHooks
from django_poolconf.backends.postgresql.pgbouncer import session_setup_sql
from django_poolconf.backends.postgresql.session import (
    BAD_STATUS,
    IDLE,
    PooledConnection,
    changes_session,
    note_baseline,
)
from django_poolconf.pool import registry
from django_poolconf.redaction import fingerprint

__all__ = ["DatabaseCreation", "DatabaseWrapper", "PooledConnection"]

#: The server ended this session for its own idleness (idle_in_transaction_session_timeout,
#: idle_session_timeout): the other connections are not concerned.
_SESSION_TIMEOUTS: Final = frozenset({"25P03", "57P05"})
#: A standby cancelled the statement to replay WAL (a recovery conflict): 40001 for
#: most conflicts (a lock, a snapshot, a tablespace, a buffer pin), 40P01 for a
#: buffer-pin deadlock with the startup process. A conflict with a database being
#: dropped (57P04) ends the session instead, and counts as a disconnect.
_RECOVERY_CONFLICTS: Final = frozenset({"40001", "40P01"})

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


#: The hooks in which Django's wrapper sets the time zone (Django 5.1+ and before).
_TIMEZONE_HOOKS: Final = ("_configure_timezone", "ensure_timezone")


def _configures_timezone(wrapper_class: type[Any]) -> bool:
    """Whether ``wrapper_class`` sets the time zone as Django's wrapper does."""
    return all(
        getattr(wrapper_class, name, None)
        is getattr(postgresql_base.DatabaseWrapper, name, None)
        for name in _TIMEZONE_HOOKS
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

    client_class = DatabaseClient
    creation_class = DatabaseCreation
    health_probes = probes

    # The key, a shallow copy of OPTIONS, and the parameters made from them.
    _params_cache: tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]] | None = None
    #: The adapters map (``"context"``) of Django's own ``get_connection_params()``.
    _django_context: object = None

    def get_connection_params(self) -> dict[str, Any]:
        if not self.is_pooled:
            params = super().get_connection_params()
            if "pool" in params and not params["pool"]:
                # Django before 5.1 hands OPTIONS["pool"] to psycopg: a plain
                # connection is what False asks for.
                del params["pool"]
            # Outside our pool Django connects with these as they are: a callable
            # PASSWORD is called here, once per connect (or once for Django's pool).
            credentials = self.credentials_for(params)
            return credentials(params) if credentials else params
        settings_dict = self.settings_dict
        django_options = settings_dict["OPTIONS"]
        # Django rebuilds the parameters on every connect; they only change when these
        # do, so the steady state reuses them. OPTIONS by its contents: code (Django's
        # tests) changes a key in place, and the next connect must see it.
        key = (
            settings_dict["NAME"],
            settings_dict["USER"],
            settings_dict["PASSWORD"],
            settings_dict["HOST"],
            settings_dict["PORT"],
            self.timezone_name,
            self.get_pool_settings(),
        )
        cached = self._params_cache
        if cached is not None and cached[0] == key and cached[1] == django_options:
            return cached[2]
        django_options = dict(django_options)
        params = super().get_connection_params()
        self._django_context = params.get("context")
        settings = self.get_pool_settings()
        params.setdefault(
            "connect_timeout", max(2, math.ceil(settings.connect_timeout))
        )
        for name, value in TCP_DEFAULTS.items():
            params.setdefault(name, value)
        # libpq uses it only when neither OPTIONS nor PGAPPNAME name the application.
        params.setdefault("fallback_application_name", _ApplicationName(self.alias))
        if settings.pgbouncer is not None:
            # PgBouncer refuses "options": the time zone is set as Django sets it,
            # statement_timeout by the pool's hooks (see pgbouncer.py).
            if (
                settings.pgbouncer == "transaction"
                and not settings.pgbouncer_prepared_statements
            ):
                # The next transaction's server connection does not know them (W012).
                params["prepare_threshold"] = None
            self._params_cache = (key, django_options, params)
            return params
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
        self._params_cache = (key, django_options, params)
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not self.is_pooled:
            return super().get_new_connection(conn_params)
        if self._connecting_unpooled:
            # A copy with settings of its own, outside the pool: a new connection.
            credentials = self.credentials_for(conn_params)
            if credentials:
                conn_params = credentials(conn_params)
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
            # A callable PASSWORD by identity: what it returns may change (a rotated
            # secret) without making this another pool.
            id(password_callable(conn_params)),
            self._context_key(conn_params.get("context")),
            conn_params.get("cursor_factory"),
            self.settings_dict["OPTIONS"].get("isolation_level"),
            # What Django's setup of a new connection reads besides the parameters.
            self.settings_dict["OPTIONS"].get("assume_role"),
            self.timezone_name,
            type(self),
        )

    def _context_key(self, context: object) -> Hashable:
        """What identifies the adapters map of the parameters.

        Django's, by what Django builds it from: ``get_adapters_template()`` is an
        ``lru_cache``, which gives a thread that calls it while another thread's first
        call runs a map of its own, equal to the cached one. By identity, threads
        that lost that race (gunicorn's, at a worker's first requests) fingerprinted
        differently, and the pool was replaced at each change of thread. Another map
        (a subclass's own), by identity.
        """
        if context is not None and context is self._django_context:
            return ("django", django_settings.USE_TZ, self.timezone)
        return id(context)

    def make_pool_hooks(self, conn_params: dict[str, Any]) -> PostgresHooks:
        level = self.settings_dict["OPTIONS"].get("isolation_level")
        settings = self.get_pool_settings()
        return PostgresHooks(
            self.alias,
            conn_params,
            None if level is None else self._configured_isolation_level(),
            read_timeout=settings.read_timeout,
            credentials=self.credentials_for(conn_params) or None,
            setup_sql=session_setup_sql(settings.pgbouncer, settings.statement_timeout),
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
        if sqlstate in _SESSION_TIMEOUTS:
            # This session only: the connection is broken, not the server. What
            # fails on it next (Django's rollback) is no news of the server either.
            if connection is not None:
                connection.session_timed_out = True
            return None
        if (
            connection is not None
            and (connection.closed or connection.broken)
            and not connection.session_timed_out
        ):
            return DISCONNECT
        return None

    def classify_read_failure(self, error: BaseException) -> str | None:
        if not isinstance(error, psycopg.Error):
            return None
        if error.sqlstate in _RECOVERY_CONFLICTS:
            # Only a statement of its own (autocommit) may run alone elsewhere; in a
            # transaction, the transaction failed, not just the statement.
            connection = self.connection
            if connection is not None and connection.pgconn.transaction_status == IDLE:
                return RECOVERY_CONFLICT
            return None
        return DISCONNECT if self.classify_error(error) == DISCONNECT else None

    def cursor_like(self, cursor: Any) -> Any:
        # psycopg's server-side cursors have a name; its client-side ones, none.
        if getattr(cursor, "name", None):
            return self.chunked_cursor()
        return self.cursor()

    def is_usable(self) -> bool:
        # Django 4.2's does not expect None: a connection given back to the pool
        # (by _close(), say) leaves the wrapper without one.
        if self.connection is None:
            return False
        return bool(super().is_usable())

    def session_in_transaction(self) -> bool:
        status = self.connection.pgconn.transaction_status
        return bool(status != psycopg.pq.TransactionStatus.IDLE)

    def connection_is_broken(self, dbapi_connection: Any) -> bool:
        # Closed or lost connections report UNKNOWN; ACTIVE is mid-query.
        return dbapi_connection.pgconn.transaction_status in BAD_STATUS

    def connection_is_idle(self, dbapi_connection: Any) -> bool:
        return bool(dbapi_connection.pgconn.transaction_status == IDLE)

    def statement_changes_session(self, sql: Any) -> bool:
        return changes_session(sql)

    def note_session_baseline(self, dbapi_connection: Any) -> None:
        note_baseline(
            dbapi_connection,
            server=self.get_pool_settings().reset_policy == "auto",
        )

    def chunked_cursor(self) -> Any:
        if self.is_pooled and self.get_pool_settings().pgbouncer == "transaction":
            # A server-side cursor lives on one server connection, and PgBouncer
            # lends the next transaction (the next FETCH) another: as with
            # DISABLE_SERVER_SIDE_CURSORS, a client-side cursor.
            return self.cursor()
        return super().chunked_cursor()

    def create_cursor(self, name: str | None = None) -> Any:
        cursor = super().create_cursor(name)
        if name and self._loan.record is not None:
            # A named cursor outside a transaction is declared WITH HOLD and outlives
            # it: if it is still open on return, the next borrower would inherit it.
            self.connection.named_cursors.append(cursor)
        return cursor
