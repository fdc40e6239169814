"""A MySQL/MariaDB server's replication status: one reading, for the router and for /health/db.

Both ask the same question (is this server a replica, and how far behind is it?),
so both send :data:`READ_ONLY_SQL` and then :data:`REPLICA_STATUS_SQL`, and read the
answers with :func:`status`. The server keeps its replica status in no table a
``SELECT`` could read: it takes two round trips where PostgreSQL takes one.

A server is a replica (``in_recovery``) while ``SHOW REPLICA STATUS`` has a row: it
is configured to replicate another, whether its threads run or not. Its lag is
``Seconds_Behind_Master`` (MySQL: ``Seconds_Behind_Source``) while both its I/O and
its SQL thread run. A stopped SQL thread (``STOP SLAVE``, an error it stopped at),
or an I/O thread cut off from the primary, makes the lag unknown (``None``), which
the router and ``/health/db`` count as too far behind, as PostgreSQL's unknown lag.
A replica with several sources (one row each) is as far behind as its furthest.

The account needs the ``REPLICA MONITOR`` (MariaDB 10.5+), ``REPLICATION CLIENT``
(MySQL) or ``SUPER`` privilege to read the replica status; without it the server
counts as a replica when it is ``read_only``, and its lag is unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

__all__ = [
    "READ_ONLY_SQL",
    "REPLICA_STATUS_SQL",
    "read_status",
    "read_status_with",
    "status",
]

#: The server's ``read_only`` (the session's own is not kept apart on MySQL).
READ_ONLY_SQL: Final = "SELECT @@global.read_only"
#: MySQL 8.0.22+ and MariaDB 10.5.1+ know the first (MySQL 8.4 only it); older
#: servers only the second.
REPLICA_STATUS_SQL: Final = ("SHOW REPLICA STATUS", "SHOW SLAVE STATUS")
#: ER_PARSE_ERROR: an older server, which knows only ``SHOW SLAVE STATUS``.
PARSE_ERROR: Final = 1064
#: ER_SPECIFIC_ACCESS_DENIED_ERROR: no privilege to read the replica status.
ACCESS_DENIED: Final = frozenset({1227})

#: (in_recovery, read_only, position, lag): the shape of PostgreSQL's status row.
#: There is no position comparable across servers (GTIDs are per domain): None.
Status = tuple[bool | None, bool, None, float | None]
#: A statement's columns' names and rows.
Result = tuple[Sequence[str], Sequence[Sequence[Any]]]


def status(read_only: Any, rows: Sequence[Mapping[str, Any]] | None) -> Status:
    """Read ``SELECT @@global.read_only``'s value and the replica status rows.

    ``rows`` maps column names to values; ``None`` when the account may not read
    them. The lag is 0 on a server that is no replica (it applies nothing).
    """
    read_only = _text(read_only) not in {None, "0", "OFF"}
    if rows is None:
        return read_only, read_only, None, None
    if not rows:
        return False, read_only, None, 0.0
    lags = [_lag(row) for row in rows]
    lag = None if None in lags else max(lag for lag in lags if lag is not None)
    return True, read_only, None, lag


def read_status(cursor: Any) -> Status:
    """The status, on a DB-API cursor of the server (the router's measurement).

    :raises django.db.DatabaseError: when a statement fails for another reason
        than a missing privilege.
    """

    def run(sql: str) -> Result:
        cursor.execute(sql)
        names = [column[0] for column in cursor.description or ()]
        return names, cursor.fetchall()

    return read_status_with(run)


def read_status_with(run: Callable[[str], Result]) -> Status:
    """The status, with ``run`` sending each statement and returning its columns' names
    and rows (the probe's, bounded by its deadline).

    :raises Exception: what ``run`` raises, unless the server does not know the
        statement or the account may not run it.
    """
    [(read_only, *_)] = run(READ_ONLY_SQL)[1]
    rows: list[dict[str, Any]] | None = None
    for sql in REPLICA_STATUS_SQL:
        try:
            names, values = run(sql)
        except Exception as error:
            code = error.args[0] if error.args else None
            if code == PARSE_ERROR and sql != REPLICA_STATUS_SQL[-1]:
                continue
            if code in ACCESS_DENIED:
                break
            raise
        rows = [dict(zip(names, row, strict=True)) for row in values]
        break
    return status(read_only, rows)


def _lag(row: Mapping[str, Any]) -> float | None:
    io = _text(_field(row, "Slave_IO_Running", "Replica_IO_Running"))
    sql = _text(_field(row, "Slave_SQL_Running", "Replica_SQL_Running"))
    seconds = _text(_field(row, "Seconds_Behind_Master", "Seconds_Behind_Source"))
    if io != "Yes" or sql != "Yes" or seconds is None:
        return None
    return max(0.0, float(seconds))


def _field(row: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in row:
            return row[name]
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
