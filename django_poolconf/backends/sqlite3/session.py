"""A pooled sqlite3 connection and its session: the baseline Django's setup leaves, the reset.

SQLite has no server: a connection's session is the library's state in this process.
What a borrower may leave in it, and what the reset on return does about it:

- an open transaction (and its locks on the file): rolled back;
- temporary tables, views, indexes and triggers: dropped;
- ``ATTACH``\\ ed databases: detached;
- the per-connection ``PRAGMA``\\ s of :data:`PRAGMAS`: set back to the baseline;
- SQL functions and collations created with ``create_function()``,
  ``create_aggregate()``, ``create_window_function()`` or ``create_collation()``
  under a new name: removed;
- an authorizer, a progress handler and a trace callback: cleared;
- the ``row_factory`` and ``text_factory`` attributes: set back.

Not reset: a function or collation a borrower re-created under a name Django's
setup uses (it replaces Django's), ``PRAGMA case_sensitive_like`` (SQLite cannot
report it), and an unfinished cursor the borrower still references (it holds its
read lock until it is closed or collected). ``reset_on_return = "rollback"`` only
rolls back and puts back the client attributes and callbacks.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Final

from django_poolconf import process

__all__ = ["PRAGMAS", "Baseline", "PooledConnection", "file_identity", "reset"]

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

#: What the state reads besides the PRAGMAs: one text per item, sorted lines.
_LISTS: Final[tuple[tuple[str, str], ...]] = (
    ("type || ' ' || name", "temp.sqlite_master"),
    ("name || '=' || file", "pragma_database_list"),
    ("name || '/' || narg", "pragma_function_list WHERE builtin = 0"),
    ("name", "pragma_collation_list"),
)
#: The state's statement for this process's SQLite (see :func:`_state_sql`).
_state_sql_cache: list[str] = []


def _state_sql(connection: sqlite3.Connection) -> str:
    """One statement, one row: the whole session as a borrower may change it.

    Reading it is local (no file I/O beyond what SQLite caches), so every return
    reads it. What this SQLite cannot report (an older or a trimmed build lacks
    some PRAGMAs, and ``function_list`` before 3.30) reads as NULL, once chosen
    for the process: every connection runs the same library.
    """
    if _state_sql_cache:
        return _state_sql_cache[0]
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


_TEMP, _DATABASES, _FUNCTIONS, _COLLATIONS = range(4)
_FIRST_PRAGMA: Final = 4
#: Dropped first: a view or trigger may name a table, and a table's drop takes its
#: indexes and triggers with it.
_DROP_ORDER: Final = ("view", "trigger", "table", "index")


class PooledConnection(sqlite3.Connection):
    """A sqlite3 connection owned by a pool (the ``factory`` its pool connects with).

    A forked child never uses, resets or closes what its parent opened: SQLite's
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

    __slots__ = ("isolation_level", "removed", "row_factory", "state", "text_factory")

    def __init__(
        self, connection: PooledConnection, earlier: Baseline | None = None
    ) -> None:
        """Take the connection's session as the baseline.

        Retaken after Django's first checkout (``earlier`` is the one taken at
        connect), it keeps the driver's own transaction handling, which SQLAlchemy
        borrowers get back: Django's checkout has put the connection in autocommit.
        """
        self.state: tuple[Any, ...] = read_state(connection)
        #: Functions ("name/narg") and collations ("name") borrowers created, which
        #: sqlite3 cannot delete: disabled on every return, in case one was made again.
        self.removed: set[tuple[int, str]] = set()
        self.row_factory = connection.row_factory
        self.text_factory = connection.text_factory
        # A str or None; typeshed's Literal of BEGIN modes says what sqlite3 accepts.
        self.isolation_level: str | None = (
            connection.isolation_level if earlier is None else earlier.isolation_level
        )


def read_state(connection: sqlite3.Connection) -> tuple[Any, ...]:
    """The session state of :func:`_state_sql`, as one tuple."""
    sql = _state_sql_cache[0] if _state_sql_cache else _state_sql(connection)
    return tuple(sqlite3.Connection.execute(connection, sql).fetchone())


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


def reset(connection: PooledConnection, policy: str) -> None:
    """Make a returned connection as its baseline; raise to have it closed instead."""
    if connection.in_transaction:
        connection.rollback()
    baseline = connection.baseline
    assert baseline is not None
    # Callbacks cannot be read back: cleared whatever the borrower did (C calls).
    connection.set_authorizer(None)
    connection.set_progress_handler(None, 0)
    connection.set_trace_callback(None)
    if connection.row_factory is not baseline.row_factory:
        connection.row_factory = baseline.row_factory
    if connection.text_factory is not baseline.text_factory:
        connection.text_factory = baseline.text_factory
    if policy == "rollback":
        return
    for kind, line in baseline.removed:
        _disable(connection, kind, line)
    state = read_state(connection)
    if state != baseline.state:
        # What a borrower created and cannot be deleted is part of it from now on.
        baseline.state = _restore(connection, state, baseline.state, baseline.removed)


def _restore(
    connection: PooledConnection,
    state: tuple[Any, ...],
    baseline: tuple[Any, ...],
    removed: set[tuple[int, str]],
) -> tuple[Any, ...]:
    """Put back what differs from the baseline; return the state now."""
    execute = connection.execute
    # PRAGMAs first: query_only would refuse the drops.
    changed = False
    for index, name in enumerate(PRAGMAS, _FIRST_PRAGMA):
        if state[index] != baseline[index]:
            value = baseline[index]
            execute(
                f"PRAGMA {name} = {_quote(value) if isinstance(value, str) else int(value)}"
            )
            changed = changed or name == "locking_mode"
    if changed:
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
    for kind in (_FUNCTIONS, _COLLATIONS):
        for line in set(_lines(state[kind])) - set(_lines(baseline[kind])):
            _disable(connection, kind, line)
            removed.add((kind, line))
    now = read_state(connection)
    if any(
        now[i] != baseline[i]
        for i in range(len(now))
        if i not in (_FUNCTIONS, _COLLATIONS)
    ):
        raise sqlite3.OperationalError("the session could not be reset")
    return now


def _disable(connection: sqlite3.Connection, kind: int, line: str) -> None:
    # Python's sqlite3 cannot delete a function: None makes calling it fail. SQLite
    # still lists both kinds by name.
    if kind == _FUNCTIONS:
        name, narg = line.rsplit("/", 1)
        connection.create_function(name, int(narg), None)
    else:
        connection.create_collation(line, None)


def _lines(value: str | None) -> list[str]:
    return value.split("\n") if value else []


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
