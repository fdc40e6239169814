"""Leak detection: connections held longer than ``leak_detection_threshold``.

The pool records each connection borrowed with leak detection on as a :class:`Held`
(where and when it was borrowed) and hands it to :data:`LEAKS`, one watcher thread
per process, which logs a warning on the ``django_poolconf.leaks`` logger, with the
stack that borrowed the connection, when it is held too long, and an INFO line when
it is eventually returned.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any, Final

from django.http import HttpRequest

__all__ = ["LEAKS", "Held", "held_now"]

logger = logging.getLogger(__name__)


class Held:
    """A connection borrowed with leak detection on: where, when, and whether reported."""

    __slots__ = ("alias", "deadline", "reported", "since", "stack", "where")

    def __init__(self, alias: str, threshold: float, skip: int) -> None:
        self.alias = alias
        self.since = time.monotonic()
        self.deadline = self.since + threshold
        self.reported = False
        frame = sys._getframe(skip + 1)
        # Frames only: source lines are looked up if a warning is ever written.
        self.stack = traceback.StackSummary.extract(
            traceback.walk_stack(frame), limit=40, lookup_lines=False
        )
        self.stack.reverse()
        self.where = _request_of(frame)


def _request_of(frame: Any) -> str:
    """The request path and view of the innermost frame handling an HttpRequest."""
    while frame is not None:
        request = frame.f_locals.get("request")
        if isinstance(request, HttpRequest):
            match = getattr(request, "resolver_match", None)
            view = (
                match._func_path
                if match is not None
                else f"{frame.f_code.co_filename}:{frame.f_code.co_name}"
            )
            return f" during request {request.path!r} (view {view})"
        frame = frame.f_back
    return ""


class _LeakWatch:
    """One daemon thread per process that reports connections held too long.

    Borrowed connections are few (at most the pools' capacity), so the thread scans
    them all a few times per threshold rather than keeping a timer per checkout.
    """

    def __init__(self) -> None:
        self.forget_fork_state()

    def forget_fork_state(self) -> None:
        """Start empty, with new locks: at import and in a forked child, where the
        parent's watcher thread does not run and its borrowers are not ours."""
        self.lock = threading.Lock()
        self.held: dict[int, Held] = {}
        self.period = 1.0
        self.pid = 0
        self.wake = threading.Event()

    def watch(self, held: Held, threshold: float) -> None:
        with self.lock:
            self.held[id(held)] = held
            period = min(max(threshold / 4, 0.01), 1.0)
            if period < self.period:
                self.period = period
                self.wake.set()
            if self.pid != os.getpid():  # first use, or a forked child
                self.pid = os.getpid()
                threading.Thread(
                    target=self._run, name="django_poolconf-leaks", daemon=True
                ).start()

    def release(self, held: Held) -> None:
        # No lock: the garbage collector may return a connection (and so call this)
        # in a thread that holds it. One dict operation is atomic.
        self.held.pop(id(held), None)
        if held.reported:
            logger.info(
                "the connection of %r reported as possibly leaked was returned "
                "after %.3f s",
                held.alias,
                time.monotonic() - held.since,
            )

    def _run(self) -> None:
        while True:
            self.wake.wait(self.period)
            self.wake.clear()
            # Nothing may end this thread: leak detection would stop for good.
            try:
                self._scan()
            except Exception:
                logger.exception("leak detection failed a scan; it carries on")

    def _scan(self) -> None:
        now = time.monotonic()
        with self.lock:
            # release() pops without the lock: scan a copy (dict.copy() runs no
            # Python code, so no other thread changes the dict meanwhile).
            watched = self.held.copy()
            due = [h for h in watched.values() if not h.reported and h.deadline <= now]
            for held in due:
                held.reported = True
        for held in due:
            try:
                self._report(held, now)
            except Exception:
                logger.exception("could not report a possibly leaked connection")

    @staticmethod
    def _report(held: Held, now: float) -> None:
        stack = "".join(held.stack.format())  # source lines are read only now
        logger.warning(
            "a connection of %r has been held for %.3f s, longer than "
            "leak_detection_threshold%s; it was checked out at:\n%s",
            held.alias,
            now - held.since,
            held.where,
            stack,
        )


#: The watcher of this process's borrowed connections.
LEAKS: Final = _LeakWatch()


def held_now() -> Iterator[Held]:
    """The borrowed connections leak detection is watching (for tests and debugging)."""
    with LEAKS.lock:
        return iter(list(LEAKS.held.values()))
