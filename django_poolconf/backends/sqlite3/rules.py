"""The checks of a pooled SQLite alias's settings: a file database, no server options."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import django
from django.db.utils import load_backend

from django_poolconf.conf.rules import Problem, show_value

__all__ = ["SERVER_ONLY_OPTIONS", "is_in_memory", "is_sqlite", "sqlite_problems"]

#: POOL options that only mean something to a database server.
SERVER_ONLY_OPTIONS: Final = (
    "statement_timeout",
    "read_timeout",
    "pgbouncer",
    "pgbouncer_prepared_statements",
    "pgbouncer_admin",
)
#: Of those, the ones that would change what the pool does (the reset, the health
#: check) also when ``POOLCONF["POOL"]`` sets them for every alias.
_BEHIND_PGBOUNCER: Final = frozenset(
    {"pgbouncer", "pgbouncer_prepared_statements", "pgbouncer_admin"}
)


#: OPTIONS that Django passes to sqlite3.connect() from 5.1 on, and refuses before.
_FROM_DJANGO_5_1: Final = ("init_command", "transaction_mode")


def is_in_memory(name: object) -> bool:
    """Whether ``NAME`` opens an in-memory database (``:memory:``, ``mode=memory``)."""
    if isinstance(name, Path):
        return False
    text = str(name)
    return (
        text == ":memory:" or text.startswith("file::memory:") or "mode=memory" in text
    )


def is_sqlite(settings_dict: Mapping[str, Any]) -> bool:
    """Whether the alias's ENGINE runs on SQLite (importing it opens no connection)."""
    try:
        wrapper = load_backend(str(settings_dict.get("ENGINE", ""))).DatabaseWrapper
    except Exception:  # noqa: BLE001 - not importable: Django's own checks say why
        return False
    return getattr(wrapper, "vendor", None) == "sqlite"


def sqlite_problems(
    where: str,
    settings_dict: Mapping[str, Any],
    pool: Mapping[str, Any],
    merged: Mapping[str, Any],
) -> list[Problem]:
    """What a pooled SQLite alias cannot have; nothing for another database.

    ``pool`` is the alias's own ``POOL``; ``merged``, its options with the
    project's defaults (``POOLCONF``).
    """
    if not is_sqlite(settings_dict):
        return []
    problems = []
    name = settings_dict.get("NAME")
    if name is not None and is_in_memory(name):
        problems.append(
            Problem(
                "E020",
                f"{where}['NAME'] is {show_value(name)}, an in-memory database: each "
                "pooled connection would have a database of its own.",
                hint="Name a database file, or use Django's own "
                "'django.db.backends.sqlite3' for an in-memory database.",
            )
        )
    options = settings_dict.get("OPTIONS") or {}
    if django.VERSION < (5, 1) and isinstance(options, Mapping):
        # Django < 5.1 hands them to sqlite3.connect(): TypeError at the first connect.
        problems.extend(
            Problem(
                "E022",
                f"{where}['OPTIONS'][{key!r}] needs Django 5.1 or later: before it, "
                "sqlite3.connect() refuses it.",
                hint="Remove it from OPTIONS, or upgrade Django to 5.1 or later.",
            )
            for key in _FROM_DJANGO_5_1
            if key in options
        )
    problems.extend(
        Problem(
            "E021",
            f"{where}['POOL'][{key!r}] is not supported by the SQLite backend.",
            hint="Remove it: it only means something to a database server.",
        )
        for key in SERVER_ONLY_OPTIONS
        if pool.get(key) not in (None, False)
    )
    problems.extend(
        Problem(
            "E021",
            f"{where} gets {key!r} from POOLCONF['POOL'], which the SQLite backend "
            "does not support.",
            hint="Set it in the POOL of the aliases behind PgBouncer instead.",
        )
        for key in sorted(_BEHIND_PGBOUNCER)
        if pool.get(key) in (None, False) and merged.get(key) not in (None, False)
    )
    return problems
