"""The leak-detection thread survives concurrent returns, in process, with no server."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from django_poolconf.monitoring import LEAKS, Held


def _watcher() -> threading.Thread | None:
    for thread in threading.enumerate():
        if thread.name == "django_poolconf-leaks":
            return thread
    return None


@pytest.fixture
def thread_errors() -> Iterator[list[str]]:
    errors: list[str] = []
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        errors.append(f"{args.thread and args.thread.name}: {args.exc_type.__name__}")
        previous(args)

    threading.excepthook = hook
    yield errors
    threading.excepthook = previous


@pytest.fixture
def fast_switches() -> Iterator[None]:
    # Switch threads often, so that returns land in the middle of a scan.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


def test_the_leak_watcher_survives_returns_during_its_scans(
    thread_errors, fast_switches, caplog
):
    # Many borrowed connections make each scan long; returns race with it.
    base = [Held("default", 3600, skip=0) for _ in range(20_000)]
    churn = [Held("default", 3600, skip=0) for _ in range(100)]
    try:
        for held in base:
            LEAKS.watch(held, 0.01)  # scans every 10 ms
        stop = time.monotonic() + 3
        while time.monotonic() < stop and not thread_errors:
            for held in churn:
                LEAKS.watch(held, 0.01)
            for held in churn:
                LEAKS.release(held)
    finally:
        for held in base:
            LEAKS.release(held)

    assert thread_errors == []
    watcher = _watcher()
    assert watcher is not None and watcher.is_alive()
    assert LEAKS.pid == os.getpid()
    # And it still reports: a connection held past its threshold is logged.
    leaked = Held("default", 0.0, skip=0)
    with caplog.at_level(logging.WARNING, logger="django_poolconf.leaks"):
        LEAKS.watch(leaked, 0.01)
        try:
            deadline = time.monotonic() + 10
            while "longer than leak_detection_threshold" not in caplog.text:
                assert time.monotonic() < deadline, "the leak was never reported"
                time.sleep(0.01)
        finally:
            LEAKS.release(leaked)
    assert leaked.reported
