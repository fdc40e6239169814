"""What a health probe of one server reports, whatever the database.

A vendor's probes (:mod:`django_poolconf.backends.postgresql.probes`) return a
:class:`ProbeResult`; :mod:`django_poolconf.health` runs them and decides what the
results mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Failure", "ProbeResult", "ServerView"]

Failure = Literal["unreachable", "timeout", "pool_saturated"]


@dataclass(frozen=True, kw_only=True)
class ServerView:
    """What the server says about its connections (``pg_stat_activity``, settings)."""

    max_connections: int
    reserved_connections: int  # superuser_reserved_connections + reserved_connections
    idle_session_timeout_s: float | None  # None: disabled, or not known to the server
    total_connections: int  # client connections to every database of the server
    #: (application_name, state, count) of the other connections to this database.
    #: ``state`` is empty for sessions of roles this one may not inspect.
    connections: tuple[tuple[str, str, int], ...]


@dataclass(frozen=True, kw_only=True)
class ProbeResult:
    """The outcome of one probe; ``failure`` is ``None`` when the server answered."""

    finished_at: float  # time.monotonic()
    failure: Failure | None = None
    error: str | None = None  # redacted
    latency_ms: float | None = None  # one round trip of the state query
    in_recovery: bool | None = None
    read_only: bool | None = None
    replication_lag_s: float | None = None
    server: ServerView | None = None
