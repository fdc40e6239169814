"""The pooled MySQL/MariaDB backend: ``ENGINE = "django_poolconf.backends.mysql"``.

Django's own MySQL wrapper, with connections borrowed from a SQLAlchemy pool.
Requires mysqlclient (Debian: ``libmariadb-dev`` and ``pkg-config`` to build it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable
from typing import Any, Final

import MySQLdb
from django.db.backends.mysql import base as mysql_base
from django.db.backends.mysql import creation as mysql_creation

from django_poolconf.backends.base import DISCONNECT, PooledDatabaseWrapperMixin
from django_poolconf.backends.credentials import password_callable
from django_poolconf.backends.mysql import probes
from django_poolconf.backends.mysql.hooks import MySQLHooks
from django_poolconf.backends.mysql.session import PooledConnection, in_transaction
from django_poolconf.pool import registry
from django_poolconf.redaction import fingerprint

__all__ = ["DatabaseCreation", "DatabaseWrapper", "PooledConnection"]

#: The client's error codes of a connection that is gone (errmsg.h): 2006 server gone
#: away, 2013 lost during a query, 2055 lost at reading; and the server's 1927
#: (ER_CONNECTION_KILLED), 4031 (disconnected for inactivity, MySQL 8.0.24+), 1053
#: (shutdown in progress).
_DISCONNECTS: Final = frozenset({2006, 2013, 2055, 1927, 4031, 1053})

#: Statements after which the session may hold state beyond them: SET (variables,
#: NAMES, a transaction's characteristics), a transaction begun by hand, locks,
#: temporary tables, prepared statements, procedures, USE, user variables assigned
#: in a query, LAST_INSERT_ID(expr); at the start of any statement of a query.
_SESSION_CHANGE: Final = re.compile(
    # Comments before a statement are skipped; /*! ... */ is run, not a comment.
    rb"(?:^|;)(?:\s|/\*(?!!).*?\*/|/\*!\d*|(?:--|\#)[^\n]*(?:\n|$))*"
    rb"(?:SET|BEGIN|START|LOCK|UNLOCK|PREPARE|USE|HANDLER|XA|SAVEPOINT|CALL"
    rb"|FLUSH)\b|\bTEMPORARY\b|:=|\bGET_LOCK\b|\bLOCK\b|\bINTO\s+@"
    rb"|\bLAST_INSERT_ID\s*\(\s*[^\s)]",
    re.IGNORECASE | re.DOTALL,
)


class DatabaseCreation(mysql_creation.DatabaseCreation):
    """Test database creation that disposes of the pool first.

    A pooled connection still open on a dropped database would be lent again.
    """

    def _create_test_db(
        self, verbosity: int, autoclobber: bool, keepdb: bool = False
    ) -> str:
        registry.dispose_all()
        return super()._create_test_db(verbosity, autoclobber, keepdb)  # type: ignore[misc, no-any-return]

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        registry.dispose_all()
        super()._destroy_test_db(test_database_name, verbosity)  # type: ignore[misc]


class DatabaseWrapper(PooledDatabaseWrapperMixin, mysql_base.DatabaseWrapper):
    """Django's MySQL wrapper, with connections borrowed from a pool."""

    creation_class = DatabaseCreation
    health_probes = probes

    _params_cache: tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]] | None = None

    def get_connection_params(self) -> dict[str, Any]:
        if not self.is_pooled:
            params = super().get_connection_params()
            params.pop("pool", None)
            credentials = self.credentials_for(params)
            return credentials(params) if credentials else params
        settings_dict = self.settings_dict
        django_options = settings_dict["OPTIONS"]
        # OPTIONS by its contents: code changes a key in place, and the next connect
        # must see it (a new pool, its parameters being others).
        key = (
            settings_dict["NAME"],
            settings_dict["USER"],
            settings_dict["PASSWORD"],
            settings_dict["HOST"],
            settings_dict["PORT"],
            self.get_pool_settings(),
        )
        cached = self._params_cache
        if cached is not None and cached[0] == key and cached[1] == django_options:
            self.isolation_level = cached[2]["isolation_level"]
            return cached[2]["params"]  # type: ignore[no-any-return]
        django_options = dict(django_options)
        params = super().get_connection_params()
        settings = self.get_pool_settings()
        params.setdefault(
            "connect_timeout", max(1, math.ceil(settings.connect_timeout))
        )
        if settings.read_timeout is not None:
            params.setdefault("read_timeout", max(1, math.ceil(settings.read_timeout)))
        self._params_cache = (
            key,
            django_options,
            {"params": params, "isolation_level": self.isolation_level},
        )
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not self.is_pooled:
            return super().get_new_connection(conn_params)
        if self._connecting_unpooled:
            credentials = self.credentials_for(conn_params)
            if credentials:
                conn_params = credentials(conn_params)
            return super().get_new_connection(conn_params)
        return self.checkout_connection(conn_params)

    def setup_sql(self, conn_params: dict[str, Any]) -> bytes:
        """What sets a reset session up as Django's setup leaves a new one, as one query."""
        statements = []
        charset = conn_params.get("charset")
        if charset:
            collation = conn_params.get("collation")
            names = f"SET NAMES {charset}"
            statements.append(f"{names} COLLATE {collation}" if collation else names)
        init_command = conn_params.get("init_command")
        if init_command:
            statements.append(str(init_command))
        # Django sets it only where the server has it on; off is what it wants.
        statements.append("SET SQL_AUTO_IS_NULL = 0")
        if self.isolation_level:
            statements.append(
                f"SET SESSION TRANSACTION ISOLATION LEVEL {self.isolation_level.upper()}"
            )
        return "; ".join(statements).encode()

    def pool_fingerprint(self, conn_params: dict[str, Any]) -> Hashable:
        return (
            fingerprint(conn_params),
            id(password_callable(conn_params)),
            id(conn_params.get("conv")),
            self.isolation_level,
            type(self),
        )

    def make_pool_hooks(self, conn_params: dict[str, Any]) -> MySQLHooks:
        return MySQLHooks(
            self.alias,
            conn_params,
            self.setup_sql(conn_params),
            statement_timeout=self.get_pool_settings().statement_timeout,
            credentials=self.credentials_for(conn_params) or None,
        )

    def connection_autocommit(self, dbapi_connection: Any) -> bool:
        return bool(dbapi_connection.get_autocommit())

    def classify_error(self, error: BaseException) -> str | None:
        if not isinstance(error, MySQLdb.Error):
            return None
        code = error.args[0] if error.args else None
        if code in _DISCONNECTS:
            return DISCONNECT
        # MySQL's read-only errors (1290 --read-only, 1792 a read-only transaction)
        # do not say whether the server became a replica: no READ_ONLY here.
        return None

    def classify_read_failure(self, error: BaseException) -> str | None:
        return DISCONNECT if self.classify_error(error) == DISCONNECT else None

    def cursor_like(self, cursor: Any) -> Any:
        return self.cursor()

    def is_usable(self) -> bool:
        if self.connection is None:
            return False
        return bool(super().is_usable())

    def session_in_transaction(self) -> bool:
        status = in_transaction(self.connection)
        # Unknown (not MariaDB's client library): Django's own view.
        return (not self.get_autocommit()) if status is None else status

    def connection_is_broken(self, dbapi_connection: Any) -> bool:
        return not dbapi_connection.open

    def connection_is_idle(self, dbapi_connection: Any) -> bool:
        # Unknown: a BEGIN sent as SQL pinned the session (statement_changes_session).
        return in_transaction(dbapi_connection) is not True

    def statement_changes_session(self, sql: Any) -> bool:
        if isinstance(sql, str):
            sql = sql.encode()
        return bool(_SESSION_CHANGE.search(sql))
