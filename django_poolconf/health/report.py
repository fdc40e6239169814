"""The health report: frozen dataclasses whose fields, and :meth:`as_dict`, are the JSON.

:class:`HealthReport` holds one :class:`AliasHealth` per alias checked; their
``as_dict()`` give the payload of ``/health/db`` and ``poolstatus --json``, whose
keys the docs' table lists. :mod:`django_poolconf.health.runner` builds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from django_poolconf.backends.probes import ServerView
from django_poolconf.conf.pool import PoolSettings
from django_poolconf.stats import PoolStats

if TYPE_CHECKING:  # it imports psycopg, which a MySQL or SQLite project may lack
    from django_poolconf.backends.postgresql.pgbouncer_admin import PgBouncerView

__all__ = [
    "DEGRADED",
    "HEALTHY",
    "STATS_KEYS",
    "UNHEALTHY",
    "AliasHealth",
    "HealthReport",
    "Reason",
    "Role",
    "Status",
    "Target",
]

Status = Literal["healthy", "degraded", "unhealthy"]
Role = Literal["primary", "replica"]
Reason = Literal[
    "unreachable",
    "timeout",
    "pool_saturated",
    "replica_lagging",
    "replica_promoted",
    "read_only_primary",
    "misconfigured",
]

HEALTHY: Final = "healthy"
DEGRADED: Final = "degraded"
UNHEALTHY: Final = "unhealthy"


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where an alias connects: shown to operators only, never with the password."""

    # Not in the repr: reports that hold a Target reach anonymous callers' frames.
    host: str = field(repr=False)
    port: str = field(repr=False)
    dbname: str
    user: str
    has_password: bool = field(default=False)

    def __str__(self) -> str:
        if self.is_file:
            return self.dbname  # a database file: no server
        # libpq's multi-host HOST and PORT are comma lists, a single port applying
        # to every host: show each server as host:port.
        hosts, ports = self.host.split(","), self.port.split(",")
        if len(ports) == 1:
            ports *= len(hosts)
        if len(hosts) != len(ports):
            return f"{self.host}:{self.port}/{self.dbname}"
        servers = ",".join(
            f"{host}:{port}" for host, port in zip(hosts, ports, strict=True)
        )
        return f"{servers}/{self.dbname}"

    def masked(self) -> str:
        """``user:***@host:port/dbname``: the password, if any, as ``***``."""
        secret = ":***" if self.has_password else ""
        user = f"{self.user}{secret}@" if self.user or secret else ""
        return f"{user}{self}"

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Target:
        """Describe the target of ``get_connection_params()``, with the password masked."""
        given = params.get("password")
        # A callable PASSWORD is not called here: it makes a password per connection.
        password = given if isinstance(given, str) else ""

        def shown(value: object, default: str) -> str:
            text = str(value or default)
            # Whatever else is shown, the password never is.
            return text.replace(password, "***") if password else text

        if "database" in params and not {"host", "dbname"} & params.keys():
            # SQLite's: a database file, no server.
            return cls(host="", port="", dbname=shown(params["database"], ""), user="")
        return cls(
            host=shown(params.get("host"), "localhost"),
            port=shown(params.get("port"), "5432"),
            dbname=shown(params.get("dbname", params.get("database")), ""),
            user=shown(params.get("user"), ""),
            has_password=bool(given),
        )

    @property
    def server(self) -> tuple[str, str]:
        """What identifies the server: aliases with the same one share its connections.

        A database file's is ``("", path)``: no server, but aliases on one file share it.
        """
        if self.is_file:
            return ("", self.dbname)
        return (self.host, self.port)

    @property
    def is_file(self) -> bool:
        """Whether the target is a database file (SQLite's), not a server."""
        return not self.host and not self.port


@dataclass(frozen=True, kw_only=True)
class AliasHealth:
    """The health of one pooled alias, as the view and ``poolstatus`` report it.

    The pool's numbers are this process's, read when the check began:
    ``pool_size``, ``checked_in``, ``checked_out`` and ``overflow`` are SQLAlchemy's
    (``overflow`` is negative while fewer than ``pool_size`` connections are open),
    and ``capacity`` is ``pool_size + max_overflow``.
    """

    alias: str
    status: Status
    role: Role
    reason: Reason | None
    latency_ms: float | None
    pool_size: int
    checked_in: int
    checked_out: int
    overflow: int
    capacity: int
    replication_lag_s: float | None = None  # replicas only; None: not known
    breaker: str | None = None  # replicas only; None: no breaker
    stats: PoolStats | None = None  # this process's counters; None: no pool yet
    error: str | None = None  # redacted; shown with detail only
    target: Target | None = None  # shown with detail only, without user or password
    settings: PoolSettings | None = field(default=None, repr=False)
    server_view: ServerView | None = field(default=None, repr=False)
    # PgBouncer's admin console, read only when asked (poolstatus) and configured.
    pgbouncer: PgBouncerView | None = field(default=None, repr=False)

    def as_dict(self, *, detail: bool = False) -> dict[str, Any]:
        """The alias's JSON object. Every alias has every key, ``null`` when unknown.

        ``server``, ``error`` and ``pgbouncer`` are ``null`` unless ``detail`` is true.
        """
        return {
            "status": self.status,
            "role": self.role,
            "reason": self.reason,
            "latency_ms": self.latency_ms,
            "pool_size": self.pool_size,
            "checked_in": self.checked_in,
            "checked_out": self.checked_out,
            "overflow": self.overflow,
            "capacity": self.capacity,
            "replication_lag_s": self.replication_lag_s,
            "breaker": self.breaker,
            # The pool's counters since it was created, in this process, with the
            # names of django_poolconf.pool_stats(); null before the pool exists.
            **{
                key: None if self.stats is None else getattr(self.stats, key)
                for key in STATS_KEYS
            },
            "server": str(self.target) if detail and self.target is not None else None,
            "error": self.error if detail else None,
            "pgbouncer": self.pgbouncer.as_dict()
            if detail and self.pgbouncer is not None
            else None,
        }


@dataclass(frozen=True, kw_only=True)
class HealthReport:
    """The health of every alias checked, and the verdict over them all.

    ``status`` is ``unhealthy`` when a primary is unhealthy, ``degraded`` when any
    alias is not healthy (an unhealthy replica included: reads fall back to the
    primary), and ``healthy`` otherwise.
    """

    status: Status
    databases: tuple[AliasHealth, ...]
    pid: int  # the process whose pools were counted

    def __getitem__(self, alias: str) -> AliasHealth:
        for health in self.databases:
            if health.alias == alias:
                return health
        raise KeyError(alias)

    def as_dict(self, *, detail: bool = False) -> dict[str, Any]:
        """The JSON payload of ``/health/db`` and ``poolstatus --json``."""
        return {
            "status": self.status,
            "detail": detail,
            "pid": self.pid if detail else None,
            "databases": {h.alias: h.as_dict(detail=detail) for h in self.databases},
        }


#: The counters of :class:`~django_poolconf.stats.PoolStats` each alias's JSON
#: object carries besides the pool's instant numbers.
STATS_KEYS: Final = (
    "waiting",
    "connections_opened",
    "connections_closed",
    "connections_invalidated",
    "checkouts",
    "checkout_timeouts",
    "checkout_refusals",
    "recycled",
    "pre_pings",
    "pre_ping_failures",
    "wait_ms_total",
    "wait_ms_max",
    "hold_ms_total",
    "hold_ms_max",
)
