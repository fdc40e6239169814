"""Bounded probes of one MySQL/MariaDB server: is it there, how fast, which role, how far behind.

The same contract as :mod:`django_poolconf.backends.postgresql.probes`: a deadline,
an idle pooled connection when the caller hands a lender, else a short-lived
connection of its own, always closed; error text without the password, the user or
the host. Role and lag are read as the router reads them
(:mod:`django_poolconf.backends.mysql.replication`), in two round trips. With
``server_view``, three more read the server's ``max_connections``, the connections
in use (``Threads_connected``) and the other sessions on this database
(``information_schema.PROCESSLIST``, by user and command: an account without the
``PROCESS`` privilege sees its own only), for the capacity plan.
"""

from __future__ import annotations

import math
import select
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import MySQLdb
from sqlalchemy import exc as sa_exc

from django_poolconf.backends.mysql import replication
from django_poolconf.backends.mysql.replication import Result
from django_poolconf.backends.probes import Failure, ProbeResult, ServerView
from django_poolconf.errors import ConnectionFailed, PoolError
from django_poolconf.pool.lender import Lender

__all__ = ["probe_pooled", "probe_server"]

#: The client's error codes of a connect or read that ran out of time.
_TIMEOUTS: Final = frozenset({2013, 4031})

#: The server view's statements; SHOW GLOBAL STATUS needs no privilege.
_LIMIT_SQL: Final = "SELECT @@GLOBAL.max_connections"
_IN_USE_SQL: Final = "SHOW GLOBAL STATUS LIKE 'Threads_connected'"
_SESSIONS_SQL: Final = (
    "SELECT USER, COMMAND, COUNT(*) FROM information_schema.PROCESSLIST "
    "WHERE DB = DATABASE() AND ID <> CONNECTION_ID() GROUP BY USER, COMMAND"
)


class _Timeout(Exception):
    """The probe's deadline passed."""


def probe_server(
    params: Mapping[str, Any],
    deadline: float,
    *,
    server_view: bool = False,
    credentials: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
) -> ProbeResult:
    """Probe with a connection of its own, opened for this probe and always closed."""
    if credentials:
        try:
            params = credentials(params)
        except ConnectionFailed as error:
            return _failed("unreachable", str(error))
    kwargs = dict(params)
    kwargs["connect_timeout"] = max(1, math.ceil(deadline - time.monotonic()))
    try:
        connection = MySQLdb.connect(**kwargs)
    except MySQLdb.Error as error:
        code = error.args[0] if error.args else None
        failure: Failure = "timeout" if code in _TIMEOUTS else "unreachable"
        return _failed(failure, _safe_error(error, params))
    try:
        return _measure(connection, deadline, params, server_view)
    finally:
        connection.close()


def probe_pooled(
    lender: Lender,
    params: Mapping[str, Any],
    deadline: float,
    *,
    server_view: bool = False,
    credentials: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
) -> ProbeResult:
    """Probe with an idle connection of the alias's pool, and give it back."""
    try:
        record = lender.borrow_idle(max(deadline - time.monotonic(), 0.0))
    except (PoolError, sa_exc.SQLAlchemyError, MySQLdb.Error) as error:
        if time.monotonic() >= deadline:
            return _failed("timeout", None)
        return _failed("unreachable", _safe_error(error, params))
    if record is None:
        return probe_server(
            params, deadline, server_view=server_view, credentials=credentials
        )
    if time.monotonic() >= deadline:
        lender.checkin(record)
        return _failed("timeout", None)
    result: ProbeResult | None = None
    try:
        result = _measure(record.dbapi_connection, deadline, params, server_view)
        return result
    finally:
        if result is not None and result.failure is None:
            lender.checkin(record)
        else:
            lender.discard(record, "its health probe failed")


def _measure(
    connection: Any, deadline: float, params: Mapping[str, Any], server_view: bool
) -> ProbeResult:
    round_trips: list[float] = []

    def run(sql: str) -> Result:
        started = time.perf_counter()
        connection.send_query(sql.encode())
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([connection.fileno()], [], [], max(remaining, 0))
        if not readable:
            raise _Timeout
        connection.read_query_result()
        round_trips.append(time.perf_counter() - started)
        result = connection.store_result()
        if result is None:
            return (), ()
        return [column[0] for column in result.describe()], result.fetch_row(maxrows=0)

    try:
        in_recovery, read_only, _, lag = replication.read_status_with(run)
        server = _server_view(run) if server_view else None
    except _Timeout:
        return _failed("timeout", None)
    except MySQLdb.Error as error:
        return _failed("unreachable", _safe_error(error, params))
    return ProbeResult(
        finished_at=time.monotonic(),
        latency_ms=round_trips[0] * 1000,  # the first round trip, as on PostgreSQL
        in_recovery=in_recovery,
        read_only=read_only,
        # Only a replica has a replication lag to report.
        replication_lag_s=lag if in_recovery else None,
        server=server,
    )


def _server_view(run: Callable[[str], Result]) -> ServerView:
    [(max_connections,)] = run(_LIMIT_SQL)[1]
    in_use = run(_IN_USE_SQL)[1]
    sessions = run(_SESSIONS_SQL)[1]
    return ServerView(
        max_connections=int(max_connections),
        # The server keeps one connection beyond max_connections for an account
        # with SUPER (or CONNECTION_ADMIN): none within it.
        reserved_connections=0,
        # wait_timeout closes idle sessions too, but a pooled connection the server
        # closed while idle is seen at checkout and replaced: no W006.
        idle_session_timeout_s=None,
        total_connections=int(in_use[0][1]) if in_use else 0,
        connections=tuple(
            (_str(user), _str(command), int(count)) for user, command, count in sessions
        ),
    )


def _str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def _failed(failure: Failure, error: str | None) -> ProbeResult:
    return ProbeResult(finished_at=time.monotonic(), failure=failure, error=error)


def _safe_error(error: BaseException, params: Mapping[str, Any]) -> str:
    """The error's text without the password, the user, the host or the port."""
    text = str(error.args[1]) if len(error.args) > 1 else str(error)
    for key in ("password", "passwd", "user", "host", "unix_socket"):
        value = params.get(key)
        if isinstance(value, str) and value:
            text = text.replace(value, "***")
    return text
