"""Bounded probes of one MySQL/MariaDB server: is it there, how fast, which role, how far behind.

The same contract as :mod:`django_poolconf.backends.postgresql.probes`: a deadline,
an idle pooled connection when the caller hands a lender, else a short-lived
connection of its own, always closed; error text without the password, the user or
the host. Role and lag are read as the router reads them
(:mod:`django_poolconf.backends.mysql.replication`), in two round trips.
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
from django_poolconf.backends.probes import Failure, ProbeResult
from django_poolconf.errors import ConnectionFailed, PoolError
from django_poolconf.pool.lender import Lender

__all__ = ["probe_pooled", "probe_server"]

#: The client's error codes of a connect or read that ran out of time.
_TIMEOUTS: Final = frozenset({2013, 4031})


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
        return _measure(connection, deadline, params)
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
        return probe_server(params, deadline, credentials=credentials)
    if time.monotonic() >= deadline:
        lender.checkin(record)
        return _failed("timeout", None)
    result: ProbeResult | None = None
    try:
        result = _measure(record.dbapi_connection, deadline, params)
        return result
    finally:
        if result is not None and result.failure is None:
            lender.checkin(record)
        else:
            lender.discard(record, "its health probe failed")


def _measure(
    connection: Any, deadline: float, params: Mapping[str, Any]
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
    )


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
