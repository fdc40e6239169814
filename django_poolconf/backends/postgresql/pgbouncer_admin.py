"""PgBouncer's admin console: its pools (``SHOW POOLS``), its limits and its version.

PgBouncer's ``[databases]`` section may give a database its own ``pool_mode`` and
``pool_size``: those of the alias's database come from ``SHOW POOLS`` and ``SHOW
DATABASES``, and PgBouncer's global ones (``SHOW CONFIG``) when it has none.

``POOL["pgbouncer_admin"]`` names the console, the ``pgbouncer`` database of the
PgBouncer in front of the alias. It speaks the simple query protocol only, and
takes no transaction: :func:`probe_pgbouncer` opens a plain autocommit connection
outside every pool, sends each ``SHOW`` as a simple query before a deadline, and
closes it. Neither the URL nor its password appears in what it returns.
"""

from __future__ import annotations

import math
import select
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from django_poolconf.backends.postgresql.redact import redact
from django_poolconf.conf.pool import PoolSettings
from django_poolconf.conf.rules import Problem

__all__ = [
    "PgBouncerPool",
    "PgBouncerView",
    "console_address",
    "console_problems",
    "probe_pgbouncer",
]

#: libpq counts ``connect_timeout`` in whole seconds, and takes less than 2 as 2.
_MIN_CONNECT_TIMEOUT_S: Final = 2
#: PgBouncer's own pseudo-database, which ``SHOW POOLS`` lists too.
ADMIN_DATABASE: Final = "pgbouncer"


@dataclass(frozen=True, kw_only=True)
class PgBouncerPool:
    """One row of ``SHOW POOLS``: a pool of PgBouncer's, for one database and user."""

    database: str
    user: str
    cl_active: int  # clients linked to a server connection, or idle
    cl_waiting: int  # clients waiting for a server connection
    sv_active: int  # server connections linked to a client
    sv_idle: int  # server connections free for the next client
    maxwait: float  # seconds the oldest waiting client has waited

    def as_dict(self) -> dict[str, Any]:
        """The pool's JSON object."""
        return {
            "database": self.database,
            "user": self.user,
            "cl_active": self.cl_active,
            "cl_waiting": self.cl_waiting,
            "sv_active": self.sv_active,
            "sv_idle": self.sv_idle,
            "maxwait": self.maxwait,
        }


@dataclass(frozen=True, kw_only=True)
class PgBouncerView:
    """What PgBouncer's admin console says; ``error`` is set when it did not answer."""

    server: str  # host:port of the admin console, each host's if several
    version: str | None = None
    pool_mode: str | None = None  # the global one, SHOW CONFIG's
    max_client_conn: int | None = None
    default_pool_size: int | None = None  # the global one, SHOW CONFIG's
    database: str | None = None  # the alias's database
    # The alias's database's own, from [databases] (None: the global one).
    database_pool_mode: str | None = None
    database_pool_size: int | None = None
    max_prepared_statements: int | None = None  # None: unknown to this version
    pools: tuple[PgBouncerPool, ...] = ()  # of the alias's database
    error: str | None = field(default=None)  # redacted

    @property
    def effective_pool_mode(self) -> str | None:
        """The pool_mode the alias's database runs in: its own, else the global one."""
        return self.database_pool_mode or self.pool_mode

    @property
    def effective_pool_size(self) -> int | None:
        """Server connections per user of the alias's database: its own, else the global."""
        if self.database_pool_size is not None:
            return self.database_pool_size
        return self.default_pool_size

    @property
    def pool_size_setting(self) -> str:
        """Which setting :attr:`effective_pool_size` is: ``pool_size`` or ``default_pool_size``."""
        return "default_pool_size" if self.database_pool_size is None else "pool_size"

    def as_dict(self) -> dict[str, Any]:
        """The JSON object under an alias's ``pgbouncer`` key."""
        return {
            "server": self.server,
            "version": self.version,
            "pool_mode": self.pool_mode,
            "max_client_conn": self.max_client_conn,
            "default_pool_size": self.default_pool_size,
            "database": self.database,
            "database_pool_mode": self.database_pool_mode,
            "database_pool_size": self.database_pool_size,
            "max_prepared_statements": self.max_prepared_statements,
            "pools": [pool.as_dict() for pool in self.pools],
            "error": self.error,
        }


class _Timeout(Exception):
    """The deadline passed."""


def probe_pgbouncer(
    conninfo: str, dbname: str, deadline: float, user: str | None = None
) -> PgBouncerView:
    """Read the pools of ``dbname``, and PgBouncer's limits, before ``deadline``.

    ``conninfo`` is ``POOL["pgbouncer_admin"]``; ``deadline`` is a
    :func:`time.monotonic` time; ``user`` is the alias's, whose pool's ``pool_mode``
    is the one that applies. Never raises for what the console does: a failure is
    the view's ``error``.
    """
    params = conninfo_to_dict(conninfo)
    server = console_address(conninfo)
    timeout = max(_MIN_CONNECT_TIMEOUT_S, math.ceil(deadline - time.monotonic()))
    try:
        connection = psycopg.Connection.connect(
            conninfo, autocommit=True, connect_timeout=timeout
        )
    except psycopg.Error as error:
        return PgBouncerView(server=server, error=_safe_error(error, params))
    try:
        pgconn = connection.pgconn
        versions = _show(pgconn, b"SHOW VERSION", deadline)
        config = {
            row["key"]: row["value"] for row in _show(pgconn, b"SHOW CONFIG", deadline)
        }
        databases = _show(pgconn, b"SHOW DATABASES", deadline)
        pools = _show(pgconn, b"SHOW POOLS", deadline)
    except _Timeout:
        return PgBouncerView(server=server, error="no answer within the timeout")
    except psycopg.Error as error:
        return PgBouncerView(server=server, error=_safe_error(error, params))
    finally:
        connection.close()
    pool_mode = config.get("pool_mode")
    default_pool_size = _integer(config.get("default_pool_size"))
    database_pool_mode, database_pool_size = _database_settings(
        dbname, user, databases, pools
    )
    return PgBouncerView(
        server=server,
        version=_version(versions),
        pool_mode=pool_mode,
        max_client_conn=_integer(config.get("max_client_conn")),
        default_pool_size=default_pool_size,
        database=dbname,
        database_pool_mode=None
        if database_pool_mode == pool_mode
        else database_pool_mode,
        database_pool_size=None
        if database_pool_size == default_pool_size
        else database_pool_size,
        max_prepared_statements=_integer(config.get("max_prepared_statements")),
        pools=tuple(
            PgBouncerPool(
                database=row.get("database") or "",
                user=row.get("user") or "",
                cl_active=_integer(row.get("cl_active")) or 0,
                cl_waiting=_integer(row.get("cl_waiting")) or 0,
                sv_active=_integer(row.get("sv_active")) or 0,
                sv_idle=_integer(row.get("sv_idle")) or 0,
                # maxwait is whole seconds, maxwait_us the microseconds beyond them.
                maxwait=(_integer(row.get("maxwait")) or 0)
                + (_integer(row.get("maxwait_us")) or 0) / 1_000_000,
            )
            for row in pools
            if row.get("database") == dbname
        ),
    )


def _database_settings(
    dbname: str,
    user: str | None,
    databases: list[dict[str, str | None]],
    pools: list[dict[str, str | None]],
) -> tuple[str | None, int | None]:
    """The ``pool_mode`` and ``pool_size`` PgBouncer applies to ``dbname``, if it says.

    ``SHOW POOLS`` gives each pool's mode (the user's, the database's or the global
    one; PgBouncer 1.18 and later), ``SHOW DATABASES`` the database's own mode
    (empty when it has none) and its pool size. A database that ``*`` serves is
    listed once a client has connected to it.
    """
    modes = [
        (row.get("user") == user, row["pool_mode"])
        for row in pools
        if row.get("database") == dbname and row.get("pool_mode")
    ]
    row = next((row for row in databases if row.get("name") == dbname), None)
    mode = max(modes, key=lambda pair: pair[0])[1] if modes else None
    if mode is None and row is not None:
        mode = row.get("pool_mode") or None
    size = None if row is None else _integer(row.get("pool_size"))
    return mode, None if size is None or size < 0 else size


def console_problems(
    alias: str, settings: PoolSettings, view: PgBouncerView
) -> list[Problem]:
    """``W016``: what the alias's ``POOL`` declares of PgBouncer, and PgBouncer denies."""
    if view.error is not None or settings.pgbouncer is None:
        return []
    where = f"DATABASES[{alias!r}]['POOL']"
    problems = []
    mode = view.effective_pool_mode
    if mode is not None and mode != settings.pgbouncer:
        setting = (
            "pool_mode"
            if view.database_pool_mode is None
            else f"pool_mode of {view.database!r} (its [databases] entry)"
        )
        problems.append(
            Problem(
                "W016",
                f"{where}['pgbouncer'] is {settings.pgbouncer!r}, but PgBouncer at "
                f"{view.server} runs "
                + ("" if view.database_pool_mode is None else f"{view.database!r} ")
                + f"in pool_mode {mode!r}.",
                hint=f"Set POOL['pgbouncer'] to {mode!r}, or PgBouncer's "
                f"{setting} to what POOL declares.",
            )
        )
    if settings.pgbouncer_prepared_statements and not view.max_prepared_statements:
        problems.append(
            Problem(
                "W016",
                f"{where}['pgbouncer_prepared_statements'] is True, but PgBouncer "
                f"{view.version} at {view.server} does not keep prepared statements "
                f"(max_prepared_statements={view.max_prepared_statements}): in "
                "transaction mode a statement prepared on one server connection "
                "fails on the next.",
                hint="Set max_prepared_statements on PgBouncer 1.21 or later, or "
                "remove pgbouncer_prepared_statements.",
            )
        )
    return problems


def console_address(conninfo: str) -> str:
    """``host:port`` of the admin console that ``conninfo`` names (libpq's defaults).

    libpq's multi-host ``host`` and ``port`` are comma lists, a single port applying
    to every host: each host is shown with its port, ``h1:6432,h2:6432``.
    """
    params = conninfo_to_dict(conninfo)
    hosts = str(params.get("host") or "").split(",")
    ports = str(params.get("port") or "").split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    if len(ports) != len(hosts):
        return f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"
    return ",".join(
        f"{host or 'localhost'}:{port or 5432}"
        for host, port in zip(hosts, ports, strict=True)
    )


def _version(rows: list[dict[str, str | None]]) -> str | None:
    """``1.18.0`` from ``PgBouncer 1.18.0``."""
    text = next(iter(rows[0].values()), None) if rows else None
    return None if text is None else text.removeprefix("PgBouncer").strip()


def _show(
    pgconn: pq.abc.PGconn, command: bytes, deadline: float
) -> list[dict[str, str | None]]:
    """Run one admin command (simple query protocol); return its rows by column name."""
    pgconn.send_query(command)
    while pgconn.flush():
        _wait(pgconn.socket, deadline, write=True)
    rows: list[dict[str, str | None]] = []
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
        names = [
            (result.fname(column) or b"").decode() for column in range(result.nfields)
        ]
        for row in range(result.ntuples):
            values = [result.get_value(row, column) for column in range(len(names))]
            rows.append(
                {
                    name: None
                    if value is None
                    else bytes(value).decode(errors="replace")
                    for name, value in zip(names, values, strict=True)
                }
            )
    if error is not None:
        raise psycopg.OperationalError(error.strip() or f"{command.decode()} failed")
    return rows


def _wait(fileno: int, deadline: float, *, write: bool) -> None:
    remaining = deadline - time.monotonic()
    poller = select.poll()
    poller.register(fileno, select.POLLOUT if write else select.POLLIN)
    if remaining <= 0 or not poller.poll(remaining * 1000):
        raise _Timeout


def _integer(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _safe_error(error: BaseException, params: Mapping[str, Any]) -> str:
    """The error's text without the password, wherever it appears."""
    text = redact(str(error), params)
    password = params.get("password")
    if isinstance(password, str) and password:
        text = text.replace(password, "***")
    return text
