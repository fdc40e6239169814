"""Bounded probes of one PostgreSQL server: is it there, how fast, which role, how far behind.

Every probe has a deadline and gives back whatever it took. It borrows an idle
connection of the alias's pool when the caller hands it a lender, else it opens a
short-lived connection of its own and closes it. Error text never carries the
password, the user or the host. Both speak libpq directly (a query sent, the socket
polled until the deadline), so that a server that hangs cannot hold a probe past it.

:mod:`django_poolconf.health` runs these in threads and decides what the results mean.
"""

from __future__ import annotations

import math
import re
import select
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import psycopg
from psycopg import pq
from sqlalchemy import exc as sa_exc

from django_poolconf.backends.postgresql.redact import redact
from django_poolconf.backends.postgresql.replication import STATUS_SQL
from django_poolconf.backends.probes import Failure, ProbeResult, ServerView
from django_poolconf.errors import ConnectionFailed, PoolError
from django_poolconf.pool.lender import Lender

__all__ = ["MIN_CONNECT_TIMEOUT_S", "probe_pooled", "probe_server"]

#: libpq counts ``connect_timeout`` in whole seconds, and takes less than 2 as 2.
MIN_CONNECT_TIMEOUT_S: Final = 2

# The router's query (one definition of the lag), as bytes for libpq.
_STATE_QUERY: Final = STATUS_SQL.encode()

# The server's own view, for poolstatus and the deployment checks. Settings that an
# older server lacks (reserved_connections: 16+, idle_session_timeout: 14+) are NULL.
_SERVER_QUERY: Final = b"""
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int
         + coalesce((SELECT setting::int FROM pg_settings
                     WHERE name = 'reserved_connections'), 0),
       (SELECT setting::bigint FROM pg_settings WHERE name = 'idle_session_timeout'),
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend');
SELECT coalesce(application_name, ''), coalesce(state, ''), count(*)
  FROM pg_stat_activity
 WHERE datname = current_database() AND backend_type = 'client backend'
   AND pid <> pg_backend_pid()
 GROUP BY 1, 2
 ORDER BY 1, 2
"""


class _Timeout(Exception):
    """The probe's deadline passed."""


def probe_server(
    params: Mapping[str, Any],
    deadline: float,
    *,
    server_view: bool = False,
    credentials: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
) -> ProbeResult:
    """Probe with a connection of its own, opened for this probe and always closed.

    ``params`` are the alias's connection parameters (``get_connection_params()``);
    ``deadline`` is a :func:`time.monotonic` time. libpq's ``connect_timeout`` is
    whole seconds and at least 2, so connecting may outlast a shorter deadline:
    callers wait for the result with their own timeout.
    """
    if credentials:
        # A new connection: the alias's credentials callables make its parameters.
        try:
            params = credentials(params)
        except ConnectionFailed as error:
            return _failed("unreachable", str(error))
    kwargs = {
        key: value
        for key, value in params.items()
        if key not in {"cursor_factory", "context"}
    }
    kwargs["connect_timeout"] = max(
        MIN_CONNECT_TIMEOUT_S, math.ceil(deadline - time.monotonic())
    )
    name = params.get("fallback_application_name")
    if name is not None:
        kwargs["fallback_application_name"] = f"{name}:health"
    try:
        connection = psycopg.Connection.connect(autocommit=True, **kwargs)
    except psycopg.Error as error:
        timed_out = isinstance(error, psycopg.errors.ConnectionTimeout) or (
            "timeout expired" in str(error)
        )
        failure: Failure = "timeout" if timed_out else "unreachable"
        return _failed(failure, _safe_error(error, params))
    try:
        return _measure(connection.pgconn, deadline, server_view, params)
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
    """Probe with an idle connection of the alias's pool, and give it back.

    It never waits for the pool, nor opens a connection in it: with no idle
    connection (another thread took it since the caller looked), it probes with a
    connection of its own, as :func:`probe_server` does. A connection whose probe
    failed or ran out of time is closed, not pooled; one borrowed after the deadline
    is given back untouched.
    """
    try:
        record = lender.borrow_idle(max(deadline - time.monotonic(), 0.0))
    except (PoolError, sa_exc.SQLAlchemyError, psycopg.Error) as error:
        if time.monotonic() >= deadline:
            return _failed("timeout", None)  # its check ran out of time: closed
        return _failed("unreachable", _safe_error(error, params))
    if record is None:
        return probe_server(
            params, deadline, server_view=server_view, credentials=credentials
        )
    if time.monotonic() >= deadline:
        # Its check took the time (a ping): the query could not be waited for, and
        # a connection left mid-query would have to be closed.
        lender.checkin(record)
        return _failed("timeout", None)
    result: ProbeResult | None = None
    try:
        result = _measure(record.dbapi_connection.pgconn, deadline, server_view, params)  # type: ignore[union-attr]
        return result
    finally:
        if result is not None and result.failure is None:
            lender.checkin(record)
        else:
            # Mid-query or broken: the next borrower must not get it.
            lender.discard(record, "its health probe failed")


def _measure(
    pgconn: pq.abc.PGconn,
    deadline: float,
    server_view: bool,
    params: Mapping[str, Any],
) -> ProbeResult:
    try:
        started = time.perf_counter()
        [[(in_recovery, read_only, _, lag)]] = _run(pgconn, _STATE_QUERY, deadline)
        latency_ms = (time.perf_counter() - started) * 1000
        server = _server_view(pgconn, deadline) if server_view else None
    except _Timeout:
        return _failed("timeout", None)
    except psycopg.Error as error:
        return _failed("unreachable", _safe_error(error, params))
    return ProbeResult(
        finished_at=time.monotonic(),
        latency_ms=latency_ms,
        in_recovery=in_recovery == "t",
        read_only=read_only == "t",
        # Only a standby has a replication lag to report.
        replication_lag_s=None
        if lag is None or in_recovery != "t"
        else max(0.0, float(lag)),
        server=server,
    )


def _server_view(pgconn: pq.abc.PGconn, deadline: float) -> ServerView:
    settings, connections = _run(pgconn, _SERVER_QUERY, deadline)
    [(max_connections, reserved, idle_ms, total)] = settings
    return ServerView(
        max_connections=int(max_connections or 0),
        reserved_connections=int(reserved or 0),
        idle_session_timeout_s=int(idle_ms) / 1000
        if idle_ms and int(idle_ms)
        else None,
        total_connections=int(total or 0),
        connections=tuple(
            (name or "", state or "", int(count or 0))
            for name, state, count in connections
        ),
    )


Rows = list[tuple[str | None, ...]]


def _run(pgconn: pq.abc.PGconn, query: bytes, deadline: float) -> list[Rows]:
    """Run ``query`` (one or more statements) before ``deadline``; return each result's rows as text.

    :raises _Timeout: when the deadline passes first; the connection is then mid-query.
    :raises psycopg.OperationalError: when a statement fails or the connection breaks.
    """
    pgconn.send_query(query)
    while pgconn.flush():
        _wait(pgconn.socket, deadline, write=True)
    results: list[Rows] = []
    error: str | None = None
    while True:
        while pgconn.is_busy():
            _wait(pgconn.socket, deadline, write=False)
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            break
        if result.status != pq.ExecStatus.TUPLES_OK:
            error = error or (result.error_message or b"").decode(errors="replace")
            continue
        results.append(
            [
                tuple(
                    None if value is None else bytes(value).decode(errors="replace")
                    for value in (
                        result.get_value(row, column)
                        for column in range(result.nfields)
                    )
                )
                for row in range(result.ntuples)
            ]
        )
    if error is not None:
        raise psycopg.OperationalError(error.strip() or "the probe query failed")
    return results


def _wait(fileno: int, deadline: float, *, write: bool) -> None:
    remaining = deadline - time.monotonic()
    poller = select.poll()
    poller.register(fileno, select.POLLOUT if write else select.POLLIN)
    if remaining <= 0 or not poller.poll(remaining * 1000):
        raise _Timeout


def _failed(failure: Failure, error: str | None) -> ProbeResult:
    return ProbeResult(finished_at=time.monotonic(), failure=failure, error=error)


def _safe_error(error: BaseException, params: Mapping[str, Any]) -> str:
    """The error's text without the password, the user, the host or its address."""
    text = redact(str(error), params, hosts=True)
    user = params.get("user")
    if isinstance(user, str) and user:
        text = re.sub(rf"(?<![\w.-]){re.escape(user)}(?![\w.-])", "***", text)
    password = params.get("password")
    if isinstance(password, str) and password and password in text:
        # Not only as a whole word: a password never appears, whatever surrounds it.
        text = text.replace(password, "***")
    return text
