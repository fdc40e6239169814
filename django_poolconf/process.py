"""The process lifecycle: one fork hook and one exit hook for the whole package.

A part of the package that keeps per-process state (the engine registry, the replica
monitor, the health probes, the metrics writer, the leak watcher, the reaper) registers
what a forked child must do with it, and what the process must do at exit, here.
``os.register_at_fork`` and ``atexit`` see one hook each, which runs the registered
steps in a stated order, whatever order the modules were imported in:

* after a fork, in the child: :data:`LOCKS` first (locks a parent's thread may have
  held at the fork are replaced), then :data:`POOLS` (inherited pools are abandoned
  without touching their sockets), then :data:`MONITORS` (background threads and
  caches of the parent are forgotten, and restarted on demand);
* at exit: :data:`POOLS` (every pool is disposed of), then the rest.

This module imports nothing of the package, so every other module may import it.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable
from typing import Final

__all__ = ["GENERATION", "LOCKS", "MONITORS", "POOLS", "on_exit", "on_fork"]

#: Orders of the steps, lowest first.
LOCKS: Final = 0
POOLS: Final = 10
MONITORS: Final = 20

_fork_steps: list[tuple[int, int, Callable[[], None]]] = []
_exit_steps: list[tuple[int, int, Callable[[], None]]] = []
_registered = threading.Lock()


class _Generation:
    """Bumped in every forked child: cheaper to compare than ``os.getpid()``."""

    value = 0


#: ``GENERATION.value`` is this process's fork generation: an object stamped with
#: another one belongs to a parent.
GENERATION: Final = _Generation()


def on_fork(order: int, step: Callable[[], None]) -> None:
    """Run ``step()`` in every forked child, after the steps of a lower ``order``."""
    with _registered:
        _fork_steps.append((order, len(_fork_steps), step))
        _fork_steps.sort(key=lambda entry: entry[:2])


def on_exit(order: int, step: Callable[[], None]) -> None:
    """Run ``step()`` at interpreter exit, after the steps of a lower ``order``."""
    with _registered:
        _exit_steps.append((order, len(_exit_steps), step))
        _exit_steps.sort(key=lambda entry: entry[:2])


def _after_fork_in_child() -> None:
    global _registered
    GENERATION.value += 1
    _registered = threading.Lock()  # a parent's thread may have held it
    for _, _, step in list(_fork_steps):
        step()


def _at_exit() -> None:
    for _, _, step in list(_exit_steps):
        step()


if hasattr(os, "register_at_fork"):  # pragma: no branch - not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
