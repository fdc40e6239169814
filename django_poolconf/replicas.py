"""What is known about each replica: kept for compatibility; see :mod:`django_poolconf.routing.replicas`."""

from __future__ import annotations

from django_poolconf.routing.replicas import (
    BreakerState,
    ReplicaState,
    format_lsn,
    has_replayed,
    is_closed,
    lag_within,
    parse_lsn,
    record_failure,
    replica_states,
    reset,
    wal_position,
)

__all__ = [
    "BreakerState",
    "ReplicaState",
    "format_lsn",
    "has_replayed",
    "is_closed",
    "lag_within",
    "parse_lsn",
    "record_failure",
    "replica_states",
    "reset",
    "wal_position",
]
