from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

from django_poolconf import engines
from django_poolconf.health import runner

ALIAS = "sqlite"

Configure = Callable[..., str]


@pytest.fixture
def sqlite_alias(tmp_path: Path, django_db_blocker: Any) -> Iterator[Configure]:
    """Add a pooled SQLite alias to ``DATABASES``, on a file in a temporary directory.

    Call it with the alias's ``POOL`` (and ``NAME``, ``OPTIONS``) to configure it;
    it returns the alias. The pool and the file go at the end of the test.
    """
    added: list[str] = []

    def configure(
        pool: dict[str, Any] | None = None, alias: str = ALIAS, **settings: Any
    ) -> str:
        entry = {
            "ENGINE": "django_poolconf.backends.sqlite3",
            "NAME": str(tmp_path / f"{alias}.sqlite3"),
            "POOL": {
                "pool_size": 2,
                "max_overflow": 0,
                "pool_timeout": 5,
                **(pool or {}),
            },
            **settings,
        }
        configured = connections.configure_settings({"default": {}, alias: entry})
        connections.settings[alias] = configured[alias]
        added.append(alias)
        return alias

    with django_db_blocker.unblock():
        try:
            yield configure
        finally:
            for alias in added:
                connections[alias].close()
                del connections[alias]
                engines.dispose(alias)
                runner._probes.pop(alias, None)
                del connections.settings[alias]
