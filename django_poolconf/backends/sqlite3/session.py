"""A pooled sqlite3 connection and its session: the baseline Django's setup leaves, the reset.

SQLite has no server: a connection's session is the library's state in this process.
What a borrower may leave in it, and what the reset on return does about it:

- an open transaction (and its locks on the file): rolled back;
- SQL functions and collations created with ``create_function()``,
  ``create_aggregate()``, ``create_window_function()`` or ``create_collation()``:
  one that replaced the baseline's (Django's ``django_date_extract``, say) is
  registered again, a new one is disabled (Python's ``sqlite3`` cannot delete one:
  calling it fails);
- an authorizer, a progress handler and a trace callback: set back;
- the ``row_factory`` and ``text_factory`` attributes: set back;
- temporary tables, views, indexes and triggers: dropped;
- ``ATTACH``\\ ed databases: detached;
- the per-connection ``PRAGMA``\\ s of :data:`PRAGMAS`: set back to the baseline.

The first four are Python calls the connection records as they are made, and cost
nothing to check. The last three are SQL: an authorizer (SQLite's callback as each
statement is compiled) notes a statement that may change them (a ``PRAGMA`` that
sets a value, ``ATTACH``, ``DETACH``, a ``CREATE`` in ``temp``), and only then does the
reset read the session (one statement) and put back what differs. Resetting expires
the connection's compiled statements, so that a cached statement that changes the
session is noted again the next time it runs.

Not reset: ``PRAGMA case_sensitive_like`` (SQLite cannot report it), the PRAGMAs not
in :data:`PRAGMAS`, and an unfinished cursor that the borrower still references (it
holds its read lock until it is closed or collected). ``reset_on_return =
"rollback"`` leaves the SQL part alone: temporary objects, attached databases and
PRAGMAs stay.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable
from typing import Any, Final

from django_poolconf import process

__all__ = [
    "PRAGMAS",
    "Baseline",
    "PooledConnection",
    "file_identity",
    "main_file",
    "read_state",
    "reset",
]

#: The PRAGMAs one connection may set for itself (or for its ``main`` database),
#: which SQLite can report: the baseline keeps their values.
PRAGMAS: Final[tuple[str, ...]] = (
    "foreign_keys",
    "recursive_triggers",
    "query_only",
    "synchronous",
    "cache_size",
    "busy_timeout",
    "temp_store",
    "legacy_alter_table",
    "reverse_unordered_selects",
    "cell_size_check",
    "automatic_index",
    "trusted_schema",
    "ignore_check_constraints",
    "cache_spill",
    "secure_delete",
    "journal_size_limit",
    "read_uncommitted",
    "count_changes",
    "full_column_names",
    "short_column_names",
    "empty_result_callbacks",
    "analysis_limit",
    "checkpoint_fullfsync",
    "fullfsync",
    "writable_schema",
    "max_page_count",
    "threads",
    "locking_mode",
    "journal_mode",
)

#: Authorizer actions that change the session for good (a PRAGMA only with a value).
_SESSION_ACTIONS: Final = frozenset(
    {
        sqlite3.SQLITE_ATTACH,
        sqlite3.SQLITE_DETACH,
        sqlite3.SQLITE_CREATE_TEMP_INDEX,
        sqlite3.SQLITE_CREATE_TEMP_TABLE,
        sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
        sqlite3.SQLITE_CREATE_TEMP_VIEW,
        sqlite3.SQLITE_CREATE_VTABLE,
    }
)
_PRAGMA: Final = sqlite3.SQLITE_PRAGMA
_OK: Final = sqlite3.SQLITE_OK

#: What the state reads besides the PRAGMAs: one text per item, sorted lines.
_LISTS: Final[tuple[tuple[str, str], ...]] = (
    ("type || ' ' || name", "temp.sqlite_master"),
    ("name || '=' || file", "pragma_database_list"),
)
_TEMP, _DATABASES = range(2)
_FIRST_PRAGMA: Final = 2
#: Dropped first: a view or trigger may name a table, and a table's drop takes its
#: indexes and triggers with it.
_DROP_ORDER: Final = ("view", "trigger", "table", "index")
#: The state's statement for this process's SQLite (see :func:`_state_sql`).
_state_sql_cache: list[str] = []

#: A registered function or collation: ("function" or "collation", name, narg).
Key = tuple[str, str, int]
#: How it was registered: the method's name, its arguments.
Registration = tuple[str, tuple[Any, ...], dict[str, Any]]


class _Watch:
    """The connection's authorizer: notes a statement that changes the session.

    A borrower's own authorizer (``set_authorizer()``) is called from it, so the
    watch goes on. It holds no reference to the connection, which holds it.
    """

    __slots__ = ("active", "delegate", "dirty")

    def __init__(self) -> None:
        self.active = True  # off while the reset runs its own statements
        self.dirty = False
        self.delegate: Callable[..., int] | None = None

    def authorize(
        self, action: int, arg1: Any, arg2: Any, database: Any, source: Any
    ) -> int:
        if action in _SESSION_ACTIONS or (action == _PRAGMA and arg2 is not None):
            self.dirty = self.active or self.dirty
        delegate = self.delegate
        if delegate is None:
            return _OK
        return delegate(action, arg1, arg2, database, source)


class PooledConnection(sqlite3.Connection):
    """A sqlite3 connection owned by a pool (the ``factory`` its pool connects with).

    It records the functions, collations and callbacks set on it, for the reset. A
    forked child never uses, resets or closes what its parent opened: SQLite's
    locks are the parent's, and a child that used or closed the parent's connection
    could corrupt the file. Such a connection raises ``sqlite3.OperationalError``.
    """

    generation: int  # process.GENERATION.value when it was opened
    baseline: Baseline | None = None
    identity: tuple[int, int] | None = None  # of the main database file, at connect
    path: str = ""  # the main database file, as SQLite opened it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.generation = process.GENERATION.value
        self.watch = _Watch()
        self.registered: dict[Key, Registration] = {}
        self.changed: set[Key] = set()  # registered since the baseline
        self.progress: tuple[Any, int] = (None, 0)
        self.trace: Any = None
        sqlite3.Connection.set_authorizer(self, self.watch.authorize)

    # -- what a borrower may set on the connection ------------------------------------

    def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._record("create_function", args, kwargs, ("name", "narg"))
        super().create_function(*args, **kwargs)

    def create_aggregate(self, *args: Any, **kwargs: Any) -> None:
        self._record("create_aggregate", args, kwargs, ("name", "n_arg"))
        super().create_aggregate(*args, **kwargs)

    if sys.version_info >= (3, 11):

        def create_window_function(self, *args: Any, **kwargs: Any) -> None:
            self._record("create_window_function", args, kwargs, ("name", "num_params"))
            super().create_window_function(*args, **kwargs)

    def create_collation(self, *args: Any, **kwargs: Any) -> None:
        self._record("create_collation", args, kwargs, ("name",))
        super().create_collation(*args, **kwargs)

    def _record(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        names: tuple[str, ...],
    ) -> None:
        values = [*args[: len(names)], *(kwargs.get(n) for n in names[len(args) :])]
        # SQLite's names are case-insensitive; functions share one namespace.
        if method == "create_collation":
            key = ("collation", str(values[0]).lower(), 0)
        else:
            key = ("function", str(values[0]).lower(), int(values[1]))
        self.registered[key] = (method, args, kwargs)
        self.changed.add(key)

    def set_authorizer(self, *args: Any, **kwargs: Any) -> None:
        callback = args[0] if args else next(iter(kwargs.values()), None)
        self.watch.delegate = callback
        # Installing one expires the compiled statements, as SQLite's own does.
        super().set_authorizer(self.watch.authorize)

    def set_progress_handler(self, *args: Any, **kwargs: Any) -> None:
        super().set_progress_handler(*args, **kwargs)
        values = [*args, *kwargs.values()]
        self.progress = (values[0], int(values[1]) if len(values) > 1 else 0)

    def set_trace_callback(self, *args: Any, **kwargs: Any) -> None:
        super().set_trace_callback(*args, **kwargs)
        self.trace = args[0] if args else next(iter(kwargs.values()), None)

    # -- a forked child's guard ---------------------------------------------------------

    def _check_owner(self) -> None:
        if self.generation != process.GENERATION.value:
            raise sqlite3.OperationalError(
                "this connection belongs to the parent process; a forked child "
                "must open its own"
            )

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        self._check_owner()
        return super().cursor(*args, **kwargs)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self._check_owner()
        return super().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        self._check_owner()
        return super().executemany(*args, **kwargs)

    def executescript(self, *args: Any, **kwargs: Any) -> Any:
        self._check_owner()
        return super().executescript(*args, **kwargs)

    def commit(self) -> None:
        self._check_owner()
        super().commit()

    def rollback(self) -> None:
        self._check_owner()
        super().rollback()

    def close(self) -> None:
        if self.generation != process.GENERATION.value:
            return  # the parent's: left alone, as the pool keeps it referenced
        super().close()

    def __repr__(self) -> str:
        # No path: pool logs never carry it.
        return f"<{type(self).__qualname__} at 0x{id(self):x}>"


class Baseline:
    """The session as Django's setup left it, restored on every return."""

    __slots__ = (
        "authorizer",
        "isolation_level",
        "progress",
        "registered",
        "row_factory",
        "state",
        "text_factory",
        "trace",
    )

    def __init__(
        self, connection: PooledConnection, earlier: Baseline | None = None
    ) -> None:
        """Take the connection's session as the baseline.

        Retaken after Django's first checkout (``earlier`` is the one taken at
        connect), it keeps the driver's own transaction handling, which SQLAlchemy
        borrowers get back: Django's checkout has put the connection in autocommit.
        """
        watch = connection.watch
        watch.active = False
        try:
            self.state: tuple[Any, ...] = read_state(connection)
        finally:
            watch.active = True
        watch.dirty = False
        self.registered = dict(connection.registered)
        connection.changed.clear()
        self.authorizer = watch.delegate
        self.progress = connection.progress
        self.trace = connection.trace
        self.row_factory = connection.row_factory
        self.text_factory = connection.text_factory
        # A str or None; typeshed's Literal of BEGIN modes says what sqlite3 accepts.
        self.isolation_level: str | None = (
            connection.isolation_level if earlier is None else earlier.isolation_level
        )


def reset(connection: PooledConnection, policy: str) -> None:
    """Make a returned connection as its baseline; raise to have it closed instead.

    Nothing but a few comparisons when the borrower changed nothing.
    """
    if connection.in_transaction:
        connection.rollback()
    baseline = connection.baseline
    assert baseline is not None
    watch = connection.watch
    if connection.changed:
        _restore_registered(connection, baseline)
    if watch.delegate is not baseline.authorizer:
        watch.delegate = baseline.authorizer
    if connection.progress != baseline.progress:
        connection.set_progress_handler(*baseline.progress)
    if connection.trace is not baseline.trace:
        connection.set_trace_callback(baseline.trace)
    if connection.row_factory is not baseline.row_factory:
        connection.row_factory = baseline.row_factory
    if connection.text_factory is not baseline.text_factory:
        connection.text_factory = baseline.text_factory
    if policy == "rollback" or not watch.dirty:
        return
    watch.active = False
    try:
        state = read_state(connection)
        if state != baseline.state:
            _restore(connection, state, baseline.state)
        # Expire the compiled statements: one that changed the session, run again
        # from the statement cache, is compiled (and noted) again.
        sqlite3.Connection.set_authorizer(connection, watch.authorize)
    finally:
        watch.active = True
    watch.dirty = False


def _restore_registered(connection: PooledConnection, baseline: Baseline) -> None:
    for key in connection.changed:
        kind, name, narg = key
        registration = baseline.registered.get(key)
        if registration is not None:
            method, args, kwargs = registration
            getattr(sqlite3.Connection, method)(connection, *args, **kwargs)
            connection.registered[key] = registration
            continue
        # Python's sqlite3 cannot delete one: None makes calling it fail.
        if kind == "collation":
            sqlite3.Connection.create_collation(connection, name, None)
        else:
            sqlite3.Connection.create_function(connection, name, narg, None)
        connection.registered.pop(key, None)
    connection.changed.clear()


def _restore(
    connection: sqlite3.Connection, state: tuple[Any, ...], baseline: tuple[Any, ...]
) -> None:
    """Put back what differs from the baseline in SQL."""
    execute = connection.execute
    # PRAGMAs first: query_only would refuse the drops.
    unlock = False
    for index, name in enumerate(PRAGMAS, _FIRST_PRAGMA):
        if state[index] != baseline[index]:
            value = baseline[index]
            shown = _quote(value) if isinstance(value, str) else int(value)
            execute(f"PRAGMA {name} = {shown}")
            unlock = unlock or name == "locking_mode"
    if unlock:
        # Back to NORMAL locking, an EXCLUSIVE lock goes at the next access.
        execute("SELECT count(*) FROM sqlite_master").fetchone()
    if state[_TEMP] != baseline[_TEMP]:
        keep = set(_lines(baseline[_TEMP]))
        objects = [
            line.split(" ", 1) for line in _lines(state[_TEMP]) if line not in keep
        ]
        for dropped in _DROP_ORDER:
            for found, name in objects:
                if found == dropped:
                    execute(f"DROP {dropped.upper()} IF EXISTS temp.{_quote(name)}")
    if state[_DATABASES] != baseline[_DATABASES]:
        keep = {line.split("=", 1)[0] for line in _lines(baseline[_DATABASES])}
        for line in _lines(state[_DATABASES]):
            name = line.split("=", 1)[0]
            if name not in keep:
                execute(f"DETACH DATABASE {_quote(name)}")
    if read_state(connection) != baseline:
        raise sqlite3.OperationalError("the session could not be reset")


def read_state(connection: sqlite3.Connection) -> tuple[Any, ...]:
    """The session's temporary objects, databases and PRAGMAs, as one tuple."""
    sql = _state_sql_cache[0] if _state_sql_cache else _state_sql(connection)
    return tuple(sqlite3.Connection.execute(connection, sql).fetchone())


def _state_sql(connection: sqlite3.Connection) -> str:
    """One statement, one row: what a borrower may change in SQL.

    What this SQLite cannot report (an older or a trimmed build lacks some PRAGMAs)
    reads as NULL, chosen once for the process: every connection runs the same
    library.
    """
    parts = []
    for item, source in _LISTS:
        part = (
            f"(SELECT group_concat(item, char(10)) FROM (SELECT {item} AS item"
            f" FROM {source} ORDER BY 1))"
        )
        parts.append(part if _answers(connection, part) else "NULL")
    for name in PRAGMAS:
        part = f"(SELECT * FROM pragma_{name}())"
        parts.append(part if _answers(connection, part) else "NULL")
    sql = "SELECT " + ", ".join(parts)
    _state_sql_cache.append(sql)
    return sql


def _answers(connection: sqlite3.Connection, part: str) -> bool:
    try:
        sqlite3.Connection.execute(connection, f"SELECT {part}").fetchone()
    except sqlite3.Error:
        return False
    return True


def file_identity(path: str) -> tuple[int, int] | None:
    """The device and inode of ``path``, or None when there is no such file."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino)


def main_file(connection: sqlite3.Connection) -> str:
    """The file of the connection's ``main`` database, as SQLite opened it."""
    row = sqlite3.Connection.execute(
        connection, "SELECT file FROM pragma_database_list WHERE name = 'main'"
    ).fetchone()
    return str(row[0] or "") if row else ""


def _lines(value: str | None) -> list[str]:
    return value.split("\n") if value else []


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
