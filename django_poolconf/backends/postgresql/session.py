"""A pooled psycopg connection and its session: the baseline Django's setup leaves, the reset.

:class:`PooledConnection` is the driver connection the pool owns. What Django's setup
leaves in the session (its baseline) is read once per physical connection
(:func:`note_baseline`), and the reset sent on each return restores it; its result is
read at the next checkout (:func:`collect_reset`).
"""

from __future__ import annotations

import re
import select
import time
import weakref
from typing import Any, Final

import psycopg
from psycopg import pq
from psycopg._preparing import PrepareManager
from psycopg.adapt import AdaptersMap

from django_poolconf import process
from django_poolconf.backends.postgresql.waiting import wait_for_answer

__all__ = [
    "BAD_STATUS",
    "CONNECTION_OK",
    "IDLE",
    "RESET_PARTS_SQL",
    "RESET_SQL",
    "RESET_TIMEOUT",
    "ClientBaseline",
    "FatalNotice",
    "PooledConnection",
    "changes_session",
    "collect_reset",
    "forget_prepared",
    "note_baseline",
    "wait_for_socket",
]

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

IDLE: Final = pq.TransactionStatus.IDLE
CONNECTION_OK: Final = pq.ConnStatus.OK
BAD_STATUS: Final = frozenset(
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
    session_timed_out: bool = False  # the server ended it for idleness (25P03, 57P05)
    reset_pending: bool = False  # the reset sent on return, its result not read yet
    reset_failed: bool = False  # a result of the pending reset reported an error
    generation: int = 0  # process.GENERATION.value when it was opened
    read_timeout: float | None = None  # POOL["read_timeout"]: see waiting.py
    #: What the connection had after it was opened and set up, restored on return:
    baseline_sql: bytes = RESET_SQL  # or RESET_PARTS_SQL and the setup's settings
    baseline: ClientBaseline

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
        if self.reset_pending and not collect_reset(self, RESET_TIMEOUT):
            raise psycopg.OperationalError("the connection's reset failed")
        if self.read_timeout is not None and len(args) == 1 and not kwargs:
            return wait_for_answer(self, args[0], self.read_timeout)
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


class ClientBaseline:
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


def collect_reset(connection: PooledConnection, timeout: float) -> bool | None:
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
            if not wait_for_socket(pgconn.socket, deadline, write=True):
                return None
        while True:
            pgconn.consume_input()
            while pgconn.is_busy():
                if not wait_for_socket(pgconn.socket, deadline, write=False):
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
    if pgconn.status != CONNECTION_OK:
        return True
    return not failed and pgconn.transaction_status == IDLE


def note_baseline(connection: PooledConnection, *, server: bool) -> None:
    """Remember the connection as Django's setup left it, to restore after each reset.

    Runs once per physical connection. With ``server``, for the ``"auto"`` policy,
    also reads what the setup set in the session: one round trip.
    """
    connection.baseline = ClientBaseline(connection)
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


def forget_prepared(connection: PooledConnection) -> None:
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


class FatalNotice:
    """Notes on its connection a FATAL error that arrived while the connection was idle."""

    __slots__ = ("connection",)

    def __init__(self, connection: PooledConnection) -> None:
        self.connection = weakref.ref(connection)

    def __call__(self, diagnostic: psycopg.errors.Diagnostic) -> None:
        if diagnostic.severity_nonlocalized in ("FATAL", "PANIC"):
            connection = self.connection()
            if connection is not None:
                connection.server_ended_session = True


def wait_for_socket(fileno: int, deadline: float, *, write: bool) -> bool:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    poller = select.poll()
    poller.register(fileno, select.POLLOUT if write else select.POLLIN)
    return bool(poller.poll(remaining * 1000))


# Statements whose effect outlasts them in the session, by their first word (after
# comments): SET (but not SET LOCAL, SET TRANSACTION, SET CONSTRAINTS), RESET, LISTEN,
# PREPARE, DECLARE (a cursor WITH HOLD), LOAD, DISCARD, DO and CALL (whose bodies
# may set anything), and temporary tables and views. Each statement of a text of
# several is read.
_SESSION_STATEMENT: Final = re.compile(
    r"(?:\s|/\*.*?\*/|--[^\n]*\n)*"
    r"(?:set\s+(?!local\b|transaction\b|constraints\b)|reset\b|listen\b|prepare\b"
    r"|declare\b|load\b|discard\b|do\b|call\b"
    r"|create\s+(?:or\s+replace\s+)?(?:(?:global|local)\s+)?temp"
    r"|create\s+(?:unlogged\s+)?table\s+pg_temp)",
    re.DOTALL,
)
# SELECT ... INTO TEMP [TABLE] makes a temporary table too.
_INTO_TEMP: Final = re.compile(r"\binto\s+temp(?:orary)?\s")
# Functions with the same effect, anywhere in a statement.
_SESSION_FUNCTIONS: Final = ("set_config", "advisory_lock", "pg_temp")


def changes_session(sql: object) -> bool:
    """Whether a statement may leave state in the session that later ones would see.

    What the SQL text shows: a function that sets state inside its body is not seen.
    ``checkout_scope = "transaction"`` keeps the connection for the rest of the
    request after such a statement; nothing depends on it for the reset, which
    every return sends whatever the text.
    """
    if not isinstance(sql, str):
        return True  # composed SQL: not read here
    lowered = sql.lower()
    if _SESSION_STATEMENT.match(lowered):
        return True
    if ";" in lowered and any(
        _SESSION_STATEMENT.match(part) for part in lowered.split(";")[1:]
    ):
        return True
    if "temp" in lowered and _INTO_TEMP.search(lowered):
        return True
    return any(name in lowered for name in _SESSION_FUNCTIONS)
