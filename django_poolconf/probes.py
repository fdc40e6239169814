"""PostgreSQL health probes: kept for compatibility; see :mod:`django_poolconf.backends.postgresql.probes`."""

from __future__ import annotations

from django_poolconf.backends.postgresql.probes import (
    MIN_CONNECT_TIMEOUT_S,
    probe_pooled,
    probe_server,
)
from django_poolconf.backends.probes import ProbeResult, ServerView

__all__ = [
    "MIN_CONNECT_TIMEOUT_S",
    "ProbeResult",
    "ServerView",
    "probe_pooled",
    "probe_server",
]
