"""What the live pool page shows: the last minute of each pool, drawn as SVG, and bursts of load.

:class:`PoolHistory` samples every pool of this process ten times a second and keeps,
for each second of the last minute, the most connections checked out and the most
threads waiting in that second. :func:`chart` turns one alias's history into the
coordinates of a small SVG chart, which the template draws: no script is needed to
draw it, and none from elsewhere. :func:`start_burst` sends this server a burst of
concurrent slow requests, so that the chart has something to show.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from django_poolconf import pool_stats_all

HISTORY_S: Final = 60
SAMPLE_INTERVAL_S: Final = 0.1
#: A burst: this many requests at once, half reading the replica, half the primary,
#: each holding its connection this long. Twice a pool's 5 + 5, so some must wait.
BURST_REQUESTS: Final = 40
BURST_HOLD_S: Final = 0.6
#: The longest a burst may take: its requests wait for connections, then hold them.
BURST_TIMEOUT_S: Final = 15.0
CHART_WIDTH: Final = 600
CHART_HEIGHT: Final = 120
LINE_WIDTH: Final = 2  # the waiting line's stroke, in the page's CSS


@dataclass(frozen=True)
class Second:
    """One second of one pool: the most connections checked out, the most threads waiting."""

    at: int  # seconds since the epoch
    checked_out: int
    waiting: int


class PoolHistory:
    """The last minute of every pool of this process, one :class:`Second` per second.

    :meth:`start` is idempotent; the sampling thread is a daemon and holds no
    connection: it reads the pools' numbers, never a database.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, dict[int, Second]] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sampling, unless it has started already."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name="pool-history", daemon=True
            )
            self._thread.start()

    def sample(self, aliases: Iterable[str]) -> None:
        """Record the pools' numbers now; an alias without a pool yet counts as idle."""
        now = int(time.time())
        stats = pool_stats_all()
        with self._lock:
            for alias in aliases:
                pool = stats.get(alias)
                checked_out = pool.checked_out if pool else 0
                waiting = pool.waiting if pool else 0
                seconds = self._seconds.setdefault(alias, {})
                last = seconds.get(now)
                if last is not None:
                    checked_out = max(checked_out, last.checked_out)
                    waiting = max(waiting, last.waiting)
                seconds[now] = Second(now, checked_out, waiting)
                for old in [at for at in seconds if at <= now - HISTORY_S]:
                    del seconds[old]

    def last_minute(self, alias: str) -> list[Second]:
        """The seconds sampled in the last minute, oldest first."""
        with self._lock:
            seconds = self._seconds.get(alias, {})
            return [seconds[at] for at in sorted(seconds)]

    def _run(self) -> None:
        from django.db import connections

        from django_poolconf.conf import is_pooled

        aliases = [
            alias for alias in connections if is_pooled(connections.settings[alias])
        ]
        while True:
            self.sample(aliases)
            time.sleep(SAMPLE_INTERVAL_S)


history = PoolHistory()


@dataclass(frozen=True)
class Chart:
    """An SVG chart's coordinates: a filled area of checked-out connections, a line of waiters."""

    width: int
    height: int
    top: int  # the count drawn at the top (one line width below the edge)
    checked_out: str  # the area's polygon points
    waiting: str  # the line's polyline points
    rules: tuple[
        tuple[str, float, float], ...
    ]  # pool_size and capacity: label, y, label's y
    peak_checked_out: int
    peak_waiting: int


def chart(seconds: list[Second], *, pool_size: int, capacity: int) -> Chart:
    """Lay out one pool's last minute: time runs left to right, now at the right edge."""
    peak_out = max((s.checked_out for s in seconds), default=0)
    peak_waiting = max((s.waiting for s in seconds), default=0)
    top = max(capacity, peak_out, peak_waiting, 1)
    step = CHART_WIDTH / (HISTORY_S - 1)
    now = int(time.time())

    def x(second: Second) -> float:
        return round(CHART_WIDTH - (now - second.at) * step, 1)

    def y(count: int) -> float:
        # The top count sits one line width below the edge, so its line shows whole.
        return round(CHART_HEIGHT - count * (CHART_HEIGHT - LINE_WIDTH) / top, 1)

    points = [f"{x(s)},{y(s.checked_out)}" for s in seconds]
    area = ""
    if points:
        area = " ".join(
            [
                f"{x(seconds[0])},{CHART_HEIGHT}",
                *points,
                f"{x(seconds[-1])},{CHART_HEIGHT}",
            ]
        )
    line = " ".join(f"{x(s)},{y(s.waiting)}" for s in seconds)
    rules = tuple(
        (label, y(count), max(y(count) - 3, 10))
        for label, count in (("pool_size", pool_size), ("capacity", capacity))
    )
    return Chart(
        CHART_WIDTH, CHART_HEIGHT, top, area, line, rules, peak_out, peak_waiting
    )


_burst_lock = threading.Lock()


def start_burst(base_url: str, *, headers: Mapping[str, str] | None = None) -> bool:
    """Send :data:`BURST_REQUESTS` concurrent slow requests to ``base_url``; ``False`` if one runs.

    Half of them read the notes' replica, half the primary (``?on=primary``); each
    holds its connection for :data:`BURST_HOLD_S` seconds. The requests run in threads
    of this process and return at once.
    """
    if not _burst_lock.acquire(blocking=False):
        return False
    urls = [
        f"{base_url}?on={'primary' if i % 2 else 'replica'}&hold={BURST_HOLD_S}"
        for i in range(BURST_REQUESTS)
    ]

    def fetch(url: str) -> None:
        request = urllib.request.Request(url, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(request, timeout=BURST_TIMEOUT_S) as response:
                response.read()
        except OSError:
            pass  # the server is stopping; the chart shows what got through

    def run() -> None:
        try:
            with ThreadPoolExecutor(BURST_REQUESTS) as executor:
                list(executor.map(fetch, urls))
        finally:
            _burst_lock.release()

    threading.Thread(target=run, name="pool-burst", daemon=True).start()
    return True


def wait_for_burst(timeout: float) -> bool:
    """Wait for a running burst to end; ``False`` if it has not within ``timeout`` seconds.

    Called before the databases stop: a request of the burst cut off by the server's
    shutdown would fail, with a traceback on the console.
    """
    if not _burst_lock.acquire(timeout=timeout):
        return False
    _burst_lock.release()
    return True
