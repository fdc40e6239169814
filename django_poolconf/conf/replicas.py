"""``REPLICA_OF``: which pooled alias is a replica of which primary.

:func:`replica_problems` checks one alias's ``REPLICA_OF`` against ``DATABASES``
(E009, E010, E011) for :func:`~django_poolconf.conf.pool.validate_alias`;
:func:`topology` reads the whole map for the router and the replica monitor; and
:func:`mirror_replicas_in_tests` points each replica's test database at its primary's.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from django.core.exceptions import ImproperlyConfigured
from django.db.utils import load_backend

from django_poolconf.conf.rules import Problem, is_pooled, show_value

__all__ = ["Topology", "mirror_replicas_in_tests", "replica_problems", "topology"]


@dataclass(frozen=True)
class Topology:
    """Which pooled aliases are replicas of which primary, from ``REPLICA_OF``."""

    #: Each primary that has replicas, and its replicas in ``DATABASES`` order.
    replicas: Mapping[str, tuple[str, ...]]
    #: Each replica's primary.
    primary_of: Mapping[str, str]


def topology(databases: Mapping[str, Any]) -> Topology:
    """Return the primaries and replicas that ``databases`` (``DATABASES``) declares.

    Only pooled aliases count as replicas: ``REPLICA_OF`` on another backend is
    ignored, as everywhere else.

    :raises ImproperlyConfigured: on a bad ``REPLICA_OF`` (E009, E010, E011), with
        the text of the system check.
    """
    replicas: dict[str, list[str]] = {}
    primary_of: dict[str, str] = {}
    for alias, settings_dict in databases.items():
        if not is_pooled(settings_dict) or settings_dict.get("REPLICA_OF") is None:
            continue
        problems = replica_problems(alias, settings_dict, databases)
        if problems:
            raise ImproperlyConfigured(str(problems[0]))
        primary = settings_dict["REPLICA_OF"]
        replicas.setdefault(primary, []).append(alias)
        primary_of[alias] = primary
    return Topology(
        MappingProxyType({p: tuple(r) for p, r in replicas.items()}),
        MappingProxyType(primary_of),
    )


def mirror_replicas_in_tests(databases: Mapping[str, Any]) -> list[str]:
    """Make each pooled replica mirror its primary in tests, unless ``TEST["MIRROR"]`` is set.

    Django's test runner then creates no test database for the replica and points
    it at its primary's. Returns the aliases changed. Called by the app's
    ``ready()``; the only setting this package writes.
    """
    changed = []
    for alias, settings_dict in databases.items():
        if (
            not isinstance(settings_dict, dict)
            or not is_pooled(settings_dict)
            or settings_dict.get("REPLICA_OF") is None
            or replica_problems(alias, settings_dict, databases)
        ):
            continue
        test = settings_dict.setdefault("TEST", {})
        if isinstance(test, dict) and test.get("MIRROR") is None:
            test["MIRROR"] = settings_dict["REPLICA_OF"]
            changed.append(alias)
    return changed


def replica_problems(
    alias: str, settings_dict: Mapping[str, Any], databases: Mapping[str, Any] | None
) -> list[Problem]:
    """The problems of a pooled alias's ``REPLICA_OF``: E009, E010 and E011.

    Without ``databases``, only the value itself is checked.
    """
    replica_of = settings_dict.get("REPLICA_OF")
    if replica_of is None:
        return []
    where = f"DATABASES[{alias!r}]"
    if not isinstance(replica_of, str) or replica_of == alias:
        return [
            Problem(
                "E009",
                f"{where}['REPLICA_OF'] must name another database alias, got "
                f"{show_value(replica_of)}.",
                hint="Set REPLICA_OF to the alias of the primary, e.g. 'default'.",
            )
        ]
    if databases is None:
        return []
    if replica_of not in databases:
        close = difflib.get_close_matches(replica_of, [str(a) for a in databases], 1)
        return [
            Problem(
                "E009",
                f"{where}['REPLICA_OF'] names {replica_of!r}, which is not in "
                "DATABASES.",
                hint=(
                    f"Did you mean {close[0]!r}?"
                    if close
                    else "Set REPLICA_OF to the alias of the primary."
                ),
            )
        ]
    primary = databases[replica_of]
    if not isinstance(primary, Mapping):
        return []
    if primary.get("REPLICA_OF") is not None:
        root = _root_primary(replica_of, databases)
        return [
            Problem(
                "E010",
                f"{where}['REPLICA_OF'] names {replica_of!r}, which is itself a "
                "replica.",
                hint=(
                    f"Name the primary that takes the writes: REPLICA_OF = {root!r}."
                    if root is not None
                    else "Name the primary that takes the writes."
                ),
            )
        ]
    engine, primary_engine = settings_dict.get("ENGINE"), primary.get("ENGINE")
    if _vendor_of(engine) != _vendor_of(primary_engine):
        return [
            Problem(
                "E011",
                f"{where} is a replica of {replica_of!r}, but its ENGINE "
                f"{show_value(engine)} is for another database than "
                f"{show_value(primary_engine)}.",
                hint="A replica runs the same database as its primary: fix ENGINE, "
                "or remove REPLICA_OF.",
            )
        ]
    return []


def _root_primary(alias: str, databases: Mapping[str, Any]) -> str | None:
    """Follow ``REPLICA_OF`` up from ``alias``; ``None`` on a loop or a dead end."""
    seen = {alias}
    while True:
        settings_dict = databases.get(alias)
        if not isinstance(settings_dict, Mapping):
            return None
        parent = settings_dict.get("REPLICA_OF")
        if parent is None:
            return alias
        if not isinstance(parent, str) or parent in seen:
            return None
        seen.add(parent)
        alias = parent


#: GeoDjango's backends, by the vendor of the database they run on.
_GIS_VENDORS: Final[Mapping[str, str]] = {
    "postgis": "postgresql",
    "spatialite": "sqlite",
    "sqlite3": "sqlite",
}


def _vendor_of(engine: object) -> str:
    """The database an ENGINE runs on: its ``DatabaseWrapper.vendor``, ``"postgresql"``.

    A backend that cannot be imported here (its driver is missing) is known by the
    last dotted name of its ENGINE, as Django's and GeoDjango's backends are named.
    Importing a backend opens no connection.
    """
    try:
        vendor = load_backend(str(engine)).DatabaseWrapper.vendor
    except Exception:  # ImproperlyConfigured, ImportError, or a broken backend
        name = str(engine).rstrip(".").rsplit(".", 1)[-1]
        return _GIS_VENDORS.get(name, name)
    return str(vendor)
