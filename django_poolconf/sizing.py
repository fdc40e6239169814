"""Pool sizing rules: the named presets and :func:`calculate_pool_size`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["PRESETS", "PoolSize", "calculate_pool_size"]


@dataclass(frozen=True, kw_only=True)
class PoolSize:
    """How many connections a pool keeps (``pool_size``) and may add (``max_overflow``)."""

    pool_size: int
    max_overflow: int

    @property
    def capacity(self) -> int:
        """The most connections the pool opens at once."""
        return self.pool_size + self.max_overflow


#: The named presets accepted by ``POOLCONF["PRESET"]``. ``"auto"`` is computed by
#: :func:`calculate_pool_size` instead.
PRESETS: Final[Mapping[str, PoolSize]] = {
    "development": PoolSize(pool_size=5, max_overflow=5),
    "small_api": PoolSize(pool_size=10, max_overflow=10),
    "high_traffic": PoolSize(pool_size=20, max_overflow=30),
    "background_worker": PoolSize(pool_size=5, max_overflow=5),
}

AUTO_PRESET: Final = "auto"
PRODUCTION_ENV: Final = "production"


def calculate_pool_size(
    *, environment: str | None = None, cpu_count: int | None = None
) -> PoolSize:
    """Size a pool for this machine, HikariCP's way: ``cores * 2 + 4``.

    In production (``environment``, by default the ``ENV`` environment variable, equal to
    ``"production"``) ``pool_size`` is twice the number of usable cores plus four and
    ``max_overflow`` equals ``pool_size``. Anywhere else a small 5 + 5 pool is enough and
    keeps a developer's database from running out of connections.
    """
    if environment is None:
        environment = os.environ.get("ENV", "")
    if environment.strip().lower() != PRODUCTION_ENV:
        return PoolSize(pool_size=5, max_overflow=5)
    if cpu_count is None:
        cpu_count = _usable_cpu_count()
    size = cpu_count * 2 + 4
    return PoolSize(pool_size=size, max_overflow=size)


def _usable_cpu_count() -> int:
    # sched_getaffinity honours CPU pinning (containers, taskset); cpu_count does not.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - platforms without affinity
