"""Prometheus metrics of every pool (optional: the ``prometheus`` extra).

:class:`PoolCollector` reads :func:`~django_poolconf.monitoring.pool_stats_all` when
Prometheus scrapes, so it costs the checkout path nothing beyond the statistics
themselves. The app registers it in ``prometheus_client``'s default registry at
startup when ``prometheus_client`` is installed (django-prometheus serves that
registry too); :func:`metrics_view` serves it for projects without django-prometheus.

Under gunicorn with prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set), a scrape reads files the workers write, not the
workers' collectors; :func:`write_multiprocess` copies each worker's pool numbers into
such files (gauges and counters; histograms stay per process). The app runs it every
10 seconds in a daemon thread of each worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

from django_poolconf import process
from django_poolconf.monitoring import pool_stats_all
from django_poolconf.stats import PoolStats, cumulative_buckets

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse
    from prometheus_client.metrics_core import Metric

__all__ = ["PoolCollector", "metrics_view", "register", "write_multiprocess"]

PREFIX: Final = "django_poolconf"

#: Gauges: instant values of each pool.
GAUGES: Final[dict[str, str]] = {
    "pool_size": "Connections the pool keeps open (pool_size).",
    "capacity": "Most connections the pool opens at once (pool_size + max_overflow).",
    "checked_in": "Idle connections in the pool.",
    "checked_out": "Connections borrowed from the pool.",
    "overflow": "Connections open beyond pool_size (negative while fewer are open).",
    "waiting": "Threads waiting for a connection.",
}
#: Counters since the pool was created (exposed with a ``_total`` suffix).
COUNTERS: Final[dict[str, str]] = {
    "connections_opened": "Connections opened.",
    "connections_closed": "Connections closed.",
    "connections_invalidated": "Connections closed as unusable.",
    "checkouts": "Connections checked out.",
    "checkout_timeouts": "Checkouts that found no free connection within pool_timeout.",
    "checkout_refusals": "Checkouts failed at once: max_waiting checkouts waited already.",
    "recycled": "Connections closed for age (pool_recycle).",
    "pre_pings": "Pings before handing out a connection.",
    "pre_ping_failures": "Pings that failed: the connection was replaced.",
}
#: Histograms: name -> (Counters attribute prefix, help).
HISTOGRAMS: Final[dict[str, tuple[str, str]]] = {
    "checkout_wait_seconds": (
        "wait",
        "Time Django's checkouts waited for a connection.",
    ),
    "hold_seconds": ("hold", "Time connections were held, checkout to return."),
}


class PoolCollector:
    """A ``prometheus_client`` collector of every pool of this process, labelled by alias and role."""

    def describe(self) -> Iterable[Metric]:
        return ()  # unchecked: names depend on no configuration, so skip collect()

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        from django_poolconf import engines

        labels = ["alias", "role"]
        stats = pool_stats_all()
        for name, help_text in GAUGES.items():
            gauge = GaugeMetricFamily(f"{PREFIX}_{name}", help_text, labels=labels)
            for s in stats.values():
                gauge.add_metric([s.alias, s.role], getattr(s, name))
            yield gauge
        for name, help_text in COUNTERS.items():
            counter = CounterMetricFamily(f"{PREFIX}_{name}", help_text, labels=labels)
            for s in stats.values():
                counter.add_metric([s.alias, s.role], getattr(s, name))
            yield counter
        for name, (kind, help_text) in HISTOGRAMS.items():
            histogram = HistogramMetricFamily(
                f"{PREFIX}_{name}", help_text, labels=labels
            )
            for s in stats.values():
                counts, total = engines.histogram_of(s.alias, kind)
                histogram.add_metric([s.alias, s.role], _cumulative(counts), total)
            yield histogram


# The registry's histogram_of() still imports this name: kept until it imports
# django_poolconf.stats.cumulative_buckets itself.
_cumulative = cumulative_buckets


_registered: PoolCollector | None = None


def register(registry: Any = None) -> PoolCollector:
    """Register the pool collector in ``registry`` (the default one), once."""
    global _registered
    from prometheus_client import REGISTRY

    if _registered is None:
        _registered = PoolCollector()
        (registry or REGISTRY).register(_registered)
    return _registered


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Serve the default registry in Prometheus' text format (``/metrics``)."""
    from django.http import HttpResponse
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    register()
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)


# -- multiprocess mode ---------------------------------------------------------------

_writer: dict[str, Any] = {}


def write_multiprocess() -> None:
    """Copy this process's pool numbers into prometheus-client's multiprocess files.

    Gauges are written per process and summed at scrape time (``livesum``); counters
    are written as the difference since the last call. The metric objects are not
    registered in any registry: in multiprocess mode the scrape reads the files.
    """
    from prometheus_client import Counter, Gauge

    if "gauges" not in _writer:
        _writer["gauges"] = {
            name: Gauge(
                f"{PREFIX}_{name}",
                help_text,
                ["alias", "role"],
                multiprocess_mode="livesum",
                registry=None,
            )
            for name, help_text in GAUGES.items()
        }
        _writer["counters"] = {
            name: Counter(
                f"{PREFIX}_{name}", help_text, ["alias", "role"], registry=None
            )
            for name, help_text in COUNTERS.items()
        }
    last: dict[tuple[str, str], float] = _writer.setdefault("last", {})
    stats: dict[str, PoolStats] = pool_stats_all()
    for s in stats.values():
        for name, gauge in _writer["gauges"].items():
            gauge.labels(s.alias, s.role).set(getattr(s, name))
        for name, counter in _writer["counters"].items():
            value = getattr(s, name)
            delta = value - last.get((s.alias, name), 0)
            if delta > 0:
                counter.labels(s.alias, s.role).inc(delta)
            last[(s.alias, name)] = value


def start_multiprocess_writer(interval: float) -> None:
    """Run :func:`write_multiprocess` every ``interval`` seconds in a daemon thread."""

    def run() -> None:
        while True:
            time.sleep(interval)
            try:
                write_multiprocess()
            except Exception:  # noqa: BLE001 - metrics must never break the worker
                import logging

                logging.getLogger("django_poolconf.pool").exception(
                    "could not write the pool metrics for multiprocess mode"
                )

    def start() -> None:
        # A forked child's pools start from zero (prometheus-client's values follow
        # the pid to the child's own files): forget what the parent wrote.
        _writer["last"] = {}
        threading.Thread(
            target=run, name="django_poolconf-metrics", daemon=True
        ).start()

    start()
    # gunicorn forks its workers after the app is loaded (--preload): each starts
    # a writer of its own.
    process.on_fork(process.MONITORS, start)
