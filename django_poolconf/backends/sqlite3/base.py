"""The pooled SQLite backend: ``ENGINE = "django_poolconf.backends.sqlite3"``.

Django's own SQLite wrapper, with connections borrowed from a SQLAlchemy pool. File
databases only: an in-memory database is one per connection, so a pool of them is
a pool of different databases.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Hashable
from typing import Any, Final

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.sqlite3 import base as sqlite_base
from django.db.backends.sqlite3 import creation as sqlite_creation

from django_poolconf.backends.base import DISCONNECT, PooledDatabaseWrapperMixin
from django_poolconf.backends.sqlite3 import probes
from django_poolconf.backends.sqlite3.hooks import SQLiteHooks
from django_poolconf.backends.sqlite3.rules import is_in_memory
from django_poolconf.backends.sqlite3.session import Baseline, PooledConnection
from django_poolconf.pool import registry
from django_poolconf.redaction import fingerprint

__all__ = ["DatabaseCreation", "DatabaseWrapper"]

#: SQLite's primary result codes that say the file itself failed: a connection
#: opened before went to the same file, and is replaced too. SQLITE_IOERR,
#: SQLITE_CORRUPT, SQLITE_CANTOPEN, SQLITE_NOTADB, and SQLITE_READONLY_DBMOVED
#: (the file was moved or removed under an open connection).
_FILE_FAILURES: Final = frozenset({10, 11, 14, 26})
_READONLY_DBMOVED: Final = 1032
#: The same, by message, for Python 3.10 (its errors carry no result code).
_FILE_FAILURE_TEXT: Final = re.compile(
    r"disk I/O error|database disk image is malformed|unable to open database"
    r"|file is not a database|Cannot operate on a closed database"
)

#: The files SQLite keeps beside a database file, in WAL mode and in rollback mode.
_SIDE_FILES: Final = ("-wal", "-shm", "-journal")

#: Statements that may set state for the rest of the session (transaction scope).
_SESSION_CHANGE: Final = re.compile(
    r"\b(?:PRAGMA|ATTACH|DETACH|TEMP|TEMPORARY)\b", re.IGNORECASE
)


class DatabaseCreation(sqlite_creation.DatabaseCreation):
    """Test databases in files, with the pool disposed of before the file changes.

    Django's SQLite test database is in memory unless ``TEST["NAME"]`` names a file;
    here it defaults to ``test_<NAME>`` beside the database. An idle pooled
    connection to a file that is deleted would go on using the deleted file, and a
    copy of a file in WAL mode would miss what is still in its ``-wal`` file.
    """

    def _get_test_db_name(self) -> str:
        test_name = self.connection.settings_dict["TEST"]["NAME"]
        if test_name is None:
            head, tail = os.path.split(str(self.connection.settings_dict["NAME"]))
            return os.path.join(head, f"test_{tail}")
        if is_in_memory(test_name):
            raise ImproperlyConfigured(
                f"DATABASES[{self.connection.alias!r}]['TEST']['NAME'] is "
                f"{test_name!r}, an in-memory database, which a pool cannot share. "
                "Name a file, or leave it unset for test_<NAME>."
            )
        return str(test_name)

    def _create_test_db(
        self, verbosity: int, autoclobber: bool, keepdb: bool = False
    ) -> str:
        registry.dispose_all()
        return super()._create_test_db(verbosity, autoclobber, keepdb)  # type: ignore[misc, no-any-return]

    def _clone_test_db(self, suffix: str, verbosity: int, keepdb: bool = False) -> None:
        # Django copies the file. In WAL mode the latest writes may be in the -wal
        # file still: the last connection's close checkpoints them into the file.
        self.connection.close()
        registry.dispose_all()
        super()._clone_test_db(suffix, verbosity, keepdb)  # type: ignore[misc]

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        registry.dispose_all()
        super()._destroy_test_db(test_database_name, verbosity)  # type: ignore[misc]
        # Django removes the file only. A clone's parallel worker may have ended
        # without closing its connections, which leaves WAL mode's files behind.
        for suffix in _SIDE_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{test_database_name}{suffix}")


class DatabaseWrapper(PooledDatabaseWrapperMixin, sqlite_base.DatabaseWrapper):
    """Django's SQLite wrapper, with connections borrowed from a pool."""

    creation_class = DatabaseCreation
    #: The health checks' probes of this vendor.
    health_probes = probes

    _params_cache: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def get_connection_params(self) -> dict[str, Any]:
        if not self.is_pooled:
            options = self.settings_dict["OPTIONS"]
            if options.get("pool"):
                raise ImproperlyConfigured(
                    f"DATABASES[{self.alias!r}]['OPTIONS']['pool'] is true, but Django "
                    "has no pool for SQLite. Remove it to use this backend's pool."
                )
            params: dict[str, Any] = super().get_connection_params()
            params.pop("pool", None)
            return params
        # An in-memory NAME, a server's option: ImproperlyConfigured (E020, E021).
        settings = self.get_pool_settings()
        settings_dict = self.settings_dict
        # Django rebuilds the parameters on every connect (and sets what its
        # setup reads on the wrapper); they only change when these do.
        key = (settings_dict["NAME"], id(settings_dict["OPTIONS"]), settings)
        cached = self._params_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        # Django sets check_same_thread=False: the pool's connections go from
        # thread to thread, and Django's wrapper checks its own thread sharing.
        params = super().get_connection_params()
        self._params_cache = (key, params)
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not self.is_pooled or self._connecting_unpooled:
            return super().get_new_connection(conn_params)
        return self.checkout_connection(conn_params)

    def pool_fingerprint(self, conn_params: dict[str, Any]) -> Hashable:
        options = self.settings_dict["OPTIONS"]
        return (
            fingerprint(conn_params),
            # Popped from the parameters by Django's, and run by its setup.
            options.get("init_command"),
            options.get("transaction_mode"),
            type(self),
        )

    def make_pool_hooks(self, conn_params: dict[str, Any]) -> SQLiteHooks:
        # A wrapper of Django's own, never connected, makes each new connection with
        # Django's setup; the borrowing wrappers come and go with their threads.
        opener = sqlite_base.DatabaseWrapper(dict(self.settings_dict), self.alias)
        opener.get_connection_params()  # sets what its get_new_connection() reads
        return SQLiteHooks(
            self.alias,
            conn_params,
            opener.get_new_connection,
            credentials=self.credentials_for(conn_params) or None,
        )

    def classify_error(self, error: BaseException) -> str | None:
        if not isinstance(error, sqlite3.Error):
            return None
        code = getattr(error, "sqlite_errorcode", None)
        if code is None:
            return DISCONNECT if _FILE_FAILURE_TEXT.search(str(error)) else None
        if code == _READONLY_DBMOVED or (code & 0xFF) in _FILE_FAILURES:
            return DISCONNECT
        if isinstance(error, sqlite3.ProgrammingError) and _FILE_FAILURE_TEXT.search(
            str(error)
        ):
            return DISCONNECT  # closed under the borrower
        return None

    def classify_read_failure(self, error: BaseException) -> str | None:
        return DISCONNECT if self.classify_error(error) == DISCONNECT else None

    def cursor_like(self, cursor: Any) -> Any:
        return self.cursor()  # SQLite has no server-side cursors

    def is_usable(self) -> bool:
        return self.connection is not None and not self.connection_is_broken(
            self.connection
        )

    def session_in_transaction(self) -> bool:
        return bool(self.connection.in_transaction)

    def connection_is_broken(self, dbapi_connection: Any) -> bool:
        try:
            dbapi_connection.in_transaction  # noqa: B018 - raises once closed
        except sqlite3.ProgrammingError:
            return True
        return False

    def connection_is_idle(self, dbapi_connection: Any) -> bool:
        return not dbapi_connection.in_transaction

    def statement_changes_session(self, sql: Any) -> bool:
        return bool(_SESSION_CHANGE.search(str(sql)))

    def note_session_baseline(self, dbapi_connection: Any) -> None:
        # What physical_connection_created receivers set is kept, like Django's setup.
        if isinstance(dbapi_connection, PooledConnection):
            dbapi_connection.baseline = Baseline(
                dbapi_connection, dbapi_connection.baseline
            )
