"""The private names of SQLAlchemy and psycopg this package relies on, checked once.

The pool implements SQLAlchemy's private hooks for a pool class (the names it uses
are listed, and looked for, in :mod:`django_poolconf.pool.sqla`); the PostgreSQL
backend reads psycopg's connection fields to skip work on the hot path. Neither is
public API, so a release of either may rename one. :func:`check_internals` runs when
the first engine is built and turns a missing name into a clear
``ImproperlyConfigured``, instead of an ``AttributeError`` in the middle of a request.
Add a name here when the package starts using one.
"""

from __future__ import annotations

from typing import Any, Final

from django.core.exceptions import ImproperlyConfigured

from django_poolconf.pool import sqla

__all__ = ["SUPPORTED", "check_internals"]

#: The versions the package is tested on, lowest to highest (as in pyproject.toml).
SUPPORTED: Final = "SQLAlchemy>=2.0.16,<3 and psycopg>=3.1.8"

#: Set on a psycopg connection by its constructor, or methods of its class.
PSYCOPG_FIELDS: Final = (
    "_autocommit",
    "_isolation_level",
    "_read_only",
    "_deferrable",
    "_prepared",
    "_notice_handlers",
    "_notify_handlers",
    "_adapters",
)
#: Implemented by ``psycopg.Connection`` (``BaseConnection`` has abstract ones).
CONNECTION_METHODS: Final = ("_set_autocommit", "wait", "close")
#: On psycopg's prepared-statement manager, emptied with the server's statements.
PREPARE_MANAGER_FIELDS: Final = (
    "_names",
    "_counts",
    "prepare_threshold",
    "prepared_max",
)
#: On an ``AdaptersMap``: the reset tells a borrower's registrations from the
#: tables it shares with its template.
ADAPTERS_MAP_FIELDS: Final = ("_loaders", "_dumpers", "_dumpers_by_oid", "types")
#: On ``psycopg.pq.PGconn``: the health probe and the ping talk to libpq directly.
PGCONN_METHODS: Final = (
    "send_query",
    "exec_",
    "notifies",
    "flush",
    "is_busy",
    "consume_input",
    "get_result",
    "socket",
    "status",
    "transaction_status",
)

_checked = False


def check_internals(engine: Any) -> None:
    """Raise ``ImproperlyConfigured`` if a private name the package uses is missing.

    ``engine`` is a freshly built engine (no connection needed): its pool is checked,
    and psycopg's connection when its dialect's driver is psycopg. Only the first
    call does the work.

    :raises ImproperlyConfigured: naming every missing name, the installed versions
        and the supported ones.
    """
    global _checked
    if _checked:
        return
    missing = sqla.missing_internals(engine.pool)
    if engine.dialect.driver == "psycopg":
        missing += _missing_psycopg()
    if missing:
        raise ImproperlyConfigured(
            f"django-poolconf cannot run on {_installed()}: they lack "
            f"{', '.join(missing)}, which it uses. Install versions in the "
            f"supported range: {SUPPORTED}."
        )
    _checked = True


def _missing_psycopg() -> list[str]:
    import psycopg
    from psycopg import pq

    # An instance holds the fields: build one on a connection that libpq refuses
    # to start (an unknown option), so no socket is opened.
    pgconn = pq.PGconn.connect_start(b"django_poolconf_self_check=1")
    try:
        connection = psycopg.Connection(pgconn)
        missing = [
            f"psycopg.Connection().{name}"
            for name in PSYCOPG_FIELDS
            if not hasattr(connection, name)
        ]
    finally:
        pgconn.finish()
    missing += [
        f"psycopg.Connection.{name}"
        for name in CONNECTION_METHODS
        if not _implemented(psycopg.Connection, psycopg.BaseConnection, name)
    ]
    try:
        from psycopg._preparing import PrepareManager
    except ImportError:
        missing.append("psycopg._preparing.PrepareManager")
    else:
        manager = PrepareManager()
        missing += [
            f"PrepareManager().{name}"
            for name in PREPARE_MANAGER_FIELDS
            if not hasattr(manager, name)
        ]
    adapters = psycopg.adapt.AdaptersMap(psycopg.adapters)
    missing += [
        f"AdaptersMap().{name}"
        for name in ADAPTERS_MAP_FIELDS
        if not hasattr(adapters, name)
    ]
    if not hasattr(adapters.types, "_registry"):
        missing.append("AdaptersMap().types._registry")
    return missing + [
        f"psycopg.pq.PGconn.{name}"
        for name in PGCONN_METHODS
        if not hasattr(pq.PGconn, name)
    ]


def _implemented(cls: type, abstract: type, name: str) -> bool:
    # Defined by ``cls`` or a class between it and ``abstract``, whose own is a stub.
    return any(
        name in vars(klass)
        for klass in cls.__mro__
        if klass is not abstract and issubclass(klass, abstract)
    )


def _installed() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("SQLAlchemy", "psycopg"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (version unknown)")
    return " and ".join(found)
