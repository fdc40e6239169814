"""Connections their borrowers left behind, and the reaper thread that returns them.

Two kinds, both Django's: connections whose Django connection object was collected
while borrowing or parking them (its finalizer queues them in :data:`ORPHANS`), and
connections whose borrowing thread ended without closing them (each lender's
``borrowed`` map notes the thread). The next checkout in the process, a waiter, or the
reaper gives them back.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Sized
from typing import Any, Final, Protocol

from django_poolconf.pool.ownership import refuse_foreign

__all__ = ["ORPHANS", "PARKED", "REAPER", "REAP_INTERVAL_S", "return_orphans"]

# The logger these messages always went to (documented), from before the pool package.
logger = logging.getLogger("django_poolconf.engines")

#: How often the reaper looks for connections borrowed by threads that have ended.
REAP_INTERVAL_S: Final = 1.0


class Borrowers(Protocol):
    """What the orphan queue and the reaper ask of a lender."""

    pid: int  # the process whose connections it lends

    @property
    def borrowed(self) -> Sized:
        """Django's loans, by the thread that borrowed."""

    def forget_fork_state(self) -> None:
        """In a forked child: drop the parent's waiters, locks and counts."""

    def reap(self) -> None:
        """Return the connections of borrowers whose thread has ended."""

    def return_orphan(
        self, record: Any, error: str | None, thread: threading.Thread | None
    ) -> None:
        """Return (or discard) a connection whose Django connection object was collected."""


#: Connections whose Django connection object was collected while borrowing or
#: keeping them parked: (lender, record, error kind or PARKED, borrowing thread),
#: appended by the object's finalizer, which may run in any thread at any
#: allocation, even while a lock of the pool is held. So it only appends; the
#: next checkout in the process, a waiter or the reaper gives them back.
ORPHANS: Final[deque[tuple[Borrowers, Any, str | None, threading.Thread | None]]] = (
    deque()
)
#: The error kind of an orphan that was parked: reset already, nothing leaked.
PARKED: Final = "parked"


def return_orphans() -> None:
    """Give back every queued orphan of this process; a parent's are kept, untouched."""
    while True:
        try:
            lender, record, error, thread = ORPHANS.popleft()
        except IndexError:
            return
        if refuse_foreign(record):
            continue  # a parent's, queued in a forked child: never touch its socket
        lender.return_orphan(record, error, thread)


class _Reaper:
    """One daemon thread per process that returns what borrowers left behind.

    Like Rails' connection pool reaper: a connection whose borrowing thread has ended
    without closing it is rolled back and returned, and orphans are given back,
    within :data:`REAP_INTERVAL_S` even when nobody checks out. Waiters do the same
    before they give up, so none times out while such a connection waits.
    """

    def __init__(self) -> None:
        self.pid = 0  # the process whose reaper thread runs
        self.lock = threading.Lock()
        self.lenders: weakref.WeakSet[Borrowers] = weakref.WeakSet()

    def add(self, lender: Borrowers) -> None:
        with self.lock:
            self.lenders.add(lender)

    def all(self) -> list[Borrowers]:
        with self.lock:
            return list(self.lenders)

    def start(self, pid: int) -> None:
        with self.lock:
            if self.pid == pid:
                return
            self.pid = pid
        threading.Thread(
            target=self._run, name="django_poolconf-reaper", daemon=True
        ).start()

    def forget_fork_state(self) -> None:
        """In a forked child: the parent's thread does not run here."""
        self.lock = threading.Lock()

    def _run(self) -> None:
        while True:
            time.sleep(REAP_INTERVAL_S)
            try:
                if ORPHANS:
                    return_orphans()
                for lender in self.all():
                    if lender.borrowed:
                        lender.reap()
            except Exception:  # pragma: no cover - keep reaping; retry next round
                logger.exception("returning abandoned connections failed")


REAPER: Final = _Reaper()
