"""Read and validate the pool settings of every alias.

This is the only module that reads raw settings: ``DATABASES[alias]["POOL"]``,
``DATABASES[alias]["REPLICA_OF"]`` and the project-wide ``POOLCONF``. Everything
downstream takes a frozen :class:`PoolSettings`, :class:`RouterSettings` or
:class:`Topology`.

One validator serves two surfaces: :mod:`django_poolconf.checks` turns every
:class:`Problem` into a system check message, and :func:`pool_settings` raises the
first error as :class:`~django.core.exceptions.ImproperlyConfigured` when a
connection is made.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Final, Literal

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from django_poolconf.sizing import AUTO_PRESET, PRESETS, calculate_pool_size

__all__ = [
    "POOLED_ENGINE_PREFIX",
    "HealthSettings",
    "PoolSettings",
    "Problem",
    "RouterSettings",
    "Topology",
    "get_poolconf",
    "health_settings",
    "is_pooled",
    "mirror_replicas_in_tests",
    "pool_settings",
    "router_settings",
    "topology",
    "validate_alias",
    "validate_poolconf",
    "validate_router",
]

#: ENGINE values starting with this are django-poolconf backends.
POOLED_ENGINE_PREFIX: Final = "django_poolconf.backends."

ResetOnReturn = Literal["auto", "rollback", "full"]
RESET_CHOICES: Final[tuple[str, ...]] = ("auto", "rollback", "full")


@dataclass(frozen=True, kw_only=True)
class PoolSettings:
    """The validated pool options of one database alias.

    Durations are seconds, except ``statement_timeout``, which is PostgreSQL's
    milliseconds. Build one with :func:`pool_settings`, not by hand.
    """

    alias: str
    pool_size: int = 5
    max_overflow: int = 10
    pool_timeout: float = 30.0  # seconds to wait for a free connection
    pool_recycle: float | None = 3600.0  # seconds before a connection is replaced
    pool_pre_ping: bool = True
    pre_ping_threshold: float = 0.5  # idle seconds after which checkout pings
    validation_timeout: float = 5.0  # seconds a ping may take
    connect_timeout: float = 10.0  # seconds to open a new connection
    statement_timeout: int | None = None  # milliseconds, None = server default
    reset_on_return: ResetOnReturn = "auto"
    thread_affinity: bool = True  # a thread keeps its connection between requests
    leak_detection_threshold: float | None = None  # seconds held before a warning
    slow_checkout_ms: float | None = None  # milliseconds waited before a warning
    replica_of: str | None = field(default=None)

    @property
    def capacity(self) -> int:
        """The most connections this alias's pool opens at once."""
        return self.pool_size + self.max_overflow


#: The keys accepted in ``POOL`` and in ``POOLCONF["POOL"]``.
POOL_KEYS: Final[tuple[str, ...]] = tuple(
    f.name for f in fields(PoolSettings) if f.name not in {"alias", "replica_of"}
)
POOLCONF_KEYS: Final[tuple[str, ...]] = ("PRESET", "POOL", "ROUTER", "HEALTH")


@dataclass(frozen=True)
class Problem:
    """One configuration problem: a system check id, a message and a remedy."""

    id: str  # "E002" or "W001"; checks prefix it with "django_poolconf."
    msg: str
    hint: str | None = None

    @property
    def is_error(self) -> bool:
        """Whether the problem stops a connection (errors) or only warns."""
        return self.id.startswith("E")

    def __str__(self) -> str:
        return self.msg if self.hint is None else f"{self.msg} {self.hint}"


def is_pooled(settings_dict: Mapping[str, Any]) -> bool:
    """Whether an alias's ENGINE is one of django-poolconf's backends."""
    return str(settings_dict.get("ENGINE", "")).startswith(POOLED_ENGINE_PREFIX)


_NO_POOLCONF: Final[Mapping[str, Any]] = MappingProxyType({})
_UNREAD: Final = object()
_poolconf: Any = _UNREAD


def get_poolconf() -> Mapping[str, Any]:
    """The project-wide ``POOLCONF`` setting, empty when unset.

    The same object comes back while the setting is unchanged, so callers may cache
    on its identity. Read once; ``override_settings`` makes it read again.
    """
    global _poolconf
    value = _poolconf
    if value is _UNREAD:
        # An unset setting costs an exception inside Django on every read: keep it.
        value = getattr(settings, "POOLCONF", None)
        value = _poolconf = _NO_POOLCONF if value is None else value
    return value  # type: ignore[no-any-return]


@receiver(setting_changed)
def _forget_poolconf(*, setting: str, **kwargs: Any) -> None:
    global _poolconf
    if setting == "POOLCONF":
        _poolconf = _UNREAD


def pool_settings(
    alias: str,
    settings_dict: Mapping[str, Any],
    *,
    databases: Mapping[str, Any] | None = None,
    poolconf: Mapping[str, Any] | None = None,
) -> PoolSettings:
    """Validate one alias's pool options and return them, frozen.

    :raises ImproperlyConfigured: on the first error, with the same text as the
        system check that reports it.
    """
    result, problems = validate_alias(
        alias, settings_dict, databases=databases, poolconf=poolconf
    )
    errors = [p for p in problems if p.is_error]
    if errors:
        raise ImproperlyConfigured(str(errors[0]))
    if result is None:
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}] does not use a django-poolconf backend, so it has no "
            "pool settings. Set its ENGINE to 'django_poolconf.backends.postgresql'."
        )
    return result


def validate_alias(
    alias: str,
    settings_dict: Mapping[str, Any],
    *,
    databases: Mapping[str, Any] | None = None,
    poolconf: Mapping[str, Any] | None = None,
) -> tuple[PoolSettings | None, list[Problem]]:
    """Validate one alias; return its settings (``None`` on error) and every problem.

    ``databases`` is the whole ``DATABASES`` mapping, used to check ``REPLICA_OF``;
    ``poolconf`` defaults to the ``POOLCONF`` setting.
    """
    if poolconf is None:
        poolconf = get_poolconf()
    problems: list[Problem] = []
    where = f"DATABASES[{alias!r}]"

    if not is_pooled(settings_dict):
        if "POOL" in settings_dict:
            problems.append(
                Problem(
                    "W001",
                    f"{where} has a 'POOL' but its ENGINE "
                    f"{settings_dict.get('ENGINE')!r} is not a django-poolconf backend, "
                    "so the pool options are ignored.",
                    hint="Set ENGINE to 'django_poolconf.backends.postgresql'.",
                )
            )
        return None, problems

    defaults, poolconf_problems = _project_defaults(poolconf)
    problems.extend(poolconf_problems)

    raw = settings_dict.get("POOL")
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(_not_a_dict("E001", f"{where}['POOL']", raw))
        raw = {}
    values = dict(defaults)
    values.update(_check_pool_dict(f"{where}['POOL']", raw, problems))

    max_age = settings_dict.get("CONN_MAX_AGE", 0)
    if max_age != 0:
        problems.append(
            Problem(
                "E005",
                f"{where}['CONN_MAX_AGE'] must be 0 with a pooled ENGINE, got "
                f"{_show(max_age)}.",
                hint="The pool keeps connections open; a persistent connection would "
                "pin one to a thread outside the pool. Remove CONN_MAX_AGE.",
            )
        )
    options = settings_dict.get("OPTIONS") or {}
    if isinstance(options, Mapping) and options.get("pool"):
        problems.append(
            Problem(
                "E006",
                f"{where}['OPTIONS']['pool'] must not be set with a pooled ENGINE.",
                hint="Django's own psycopg pool and django-poolconf's pool would pool "
                "twice. Remove OPTIONS['pool'] and size the pool with POOL.",
            )
        )
    if (
        isinstance(options, Mapping)
        and "connect_timeout" in options
        and "connect_timeout" in raw
    ):
        problems.append(
            Problem(
                "W002",
                f"{where}['OPTIONS']['connect_timeout'] overrides "
                f"{where}['POOL']['connect_timeout'].",
                hint="Set connect_timeout in one place: POOL.",
            )
        )

    replica_problems = _replica_problems(alias, settings_dict, databases)
    problems.extend(replica_problems)
    replica_of = settings_dict.get("REPLICA_OF")
    if not isinstance(replica_of, str) or replica_of == alias:
        replica_of = None

    if any(p.is_error for p in problems):
        return None, problems
    return PoolSettings(alias=alias, replica_of=replica_of, **values), problems


def _replica_problems(
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
                f"{_show(replica_of)}.",
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
                f"{_show(engine)} is for another database than {_show(primary_engine)}.",
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
    from django.db.utils import load_backend

    try:
        vendor = load_backend(str(engine)).DatabaseWrapper.vendor
    except Exception:  # ImproperlyConfigured, ImportError, or a broken backend
        name = str(engine).rstrip(".").rsplit(".", 1)[-1]
        return _GIS_VENDORS.get(name, name)
    return str(vendor)


def validate_poolconf(poolconf: object | None = None) -> list[Problem]:
    """Return the problems of the ``POOLCONF`` setting alone."""
    if poolconf is None:
        poolconf = get_poolconf()
    problems = _project_defaults(poolconf)[1]
    # Only here, not in validate_alias(): a mistake in the health settings must not
    # stop the database connections; the health view and command raise it instead.
    return problems + _validate_health(poolconf)[1]


def _project_defaults(poolconf: object) -> tuple[dict[str, Any], list[Problem]]:
    """Apply ``POOLCONF``: the preset first, then ``POOLCONF["POOL"]``."""
    problems: list[Problem] = []
    if not isinstance(poolconf, Mapping):
        problems.append(_not_a_dict("E007", "POOLCONF", poolconf))
        return {}, problems
    for key in poolconf:
        if key not in POOLCONF_KEYS:
            problems.append(_unknown_key("E007", "POOLCONF", key, POOLCONF_KEYS))

    defaults: dict[str, Any] = {}
    preset = poolconf.get("PRESET")
    if preset is not None:
        choices = (*PRESETS, AUTO_PRESET)
        if preset == AUTO_PRESET:
            size = calculate_pool_size()
        elif isinstance(preset, str) and preset in PRESETS:
            size = PRESETS[preset]
        else:
            close = difflib.get_close_matches(str(preset), choices, 1)
            problems.append(
                Problem(
                    "E008",
                    f"POOLCONF['PRESET'] must be one of {_choices(choices)}, got "
                    f"{_show(preset)}.",
                    hint=f"Did you mean {close[0]!r}?" if close else None,
                )
            )
            size = None
        if size is not None:
            defaults.update(pool_size=size.pool_size, max_overflow=size.max_overflow)

    raw = poolconf.get("POOL")
    if raw is not None:
        if isinstance(raw, Mapping):
            defaults.update(_check_pool_dict("POOLCONF['POOL']", raw, problems))
        else:
            problems.append(_not_a_dict("E001", "POOLCONF['POOL']", raw))
    return defaults, problems


def _check_pool_dict(
    where: str, raw: Mapping[object, Any], problems: list[Problem]
) -> dict[str, Any]:
    """Validate each key of a POOL dict; return the good values."""
    good: dict[str, Any] = {}
    for key, value in raw.items():
        rule = _RULES.get(key) if isinstance(key, str) else None
        if rule is None:
            problems.append(_unknown_key("E002", where, key, POOL_KEYS))
            continue
        assert isinstance(key, str)
        problem = rule(f"{where}[{key!r}]", key, value)
        if problem is None:
            good[key] = (
                float(value) if key in _FLOAT_KEYS and value is not None else value
            )
        else:
            problems.append(problem)
    return good


_DICT_EXAMPLES: Final[Mapping[str, str]] = {
    "POOLCONF": "{'PRESET': 'small_api'}",
    "ROUTER": "{'PIN_SECONDS': 5}",
    "APPS": "{'analytics': 'analytics'}",
}


def _not_a_dict(check_id: str, where: str, value: object) -> Problem:
    name = where.rsplit("[", 1)[-1].strip("[]'")
    example = _DICT_EXAMPLES.get(name, "{'pool_size': 10}")
    return Problem(
        check_id,
        f"{where} must be a dict, got {_show(value)}.",
        hint=f"Write {name} as a dict, e.g. {example}.",
    )


def _unknown_key(
    check_id: str, where: str, key: object, valid: tuple[str, ...]
) -> Problem:
    close = difflib.get_close_matches(str(key), valid, 1)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    return Problem(
        check_id,
        f"{where} has an unknown key {_show(key)}.",
        hint=f"{hint}Valid keys are {_choices(valid)}.",
    )


# Each rule returns a Problem for a bad value, None for a good one.
Rule = Callable[[str, str, object], "Problem | None"]


def _integer(minimum: int, *, optional: bool = False) -> Rule:
    def rule(where: str, key: str, value: object) -> Problem | None:
        if optional and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return _type_problem(where, key, value, "an integer", optional)
        if value < minimum:
            return _range_problem(where, value, f"an integer >= {minimum}", optional)
        return None

    return rule


def _number(
    minimum: float, *, inclusive: bool, optional: bool = False, unit: str = "seconds"
) -> Rule:
    bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"

    def rule(where: str, key: str, value: object) -> Problem | None:
        if optional and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return _type_problem(where, key, value, f"a number of {unit}", optional)
        try:
            as_float = float(value)
        except OverflowError:  # an int too large for a float
            as_float = math.inf
        if (
            not math.isfinite(as_float)
            or value < minimum
            or (not inclusive and value == minimum)
        ):
            return _range_problem(where, value, f"a number {bound} ({unit})", optional)
        return None

    return rule


def _boolean(where: str, key: str, value: object) -> Problem | None:
    if isinstance(value, bool):
        return None
    return _type_problem(where, key, value, "True or False", False)


def _choice(choices: tuple[str, ...]) -> Rule:
    def rule(where: str, key: str, value: object) -> Problem | None:
        if value in choices:
            return None
        close = difflib.get_close_matches(str(value), choices, 1)
        return Problem(
            "E004",
            f"{where} must be one of {_choices(choices)}, got {_show(value)}.",
            hint=f"Did you mean {close[0]!r}?" if close else None,
        )

    return rule


def _type_problem(
    where: str, key: str, value: object, expected: str, optional: bool
) -> Problem:
    also = " or None" if optional else ""
    return Problem(
        "E003",
        f"{where} must be {expected}{also}, got {_show(value)} "
        f"({type(value).__name__}).",
        hint=(
            f"Write {key} as a Python value, not a string: e.g. {key}={_example(key)}."
            if isinstance(value, str)
            else f"For example: {key}={_example(key)}."
        ),
    )


def _range_problem(where: str, value: object, expected: str, optional: bool) -> Problem:
    also = " or None" if optional else ""
    key = where.rsplit("[", 1)[-1].strip("[]'\"")
    return Problem(
        "E004",
        f"{where} must be {expected}{also}, got {_show(value)}.",
        hint=f"For example: {key}={_example(key)}.",
    )


_EXAMPLES: Final[Mapping[str, str]] = {
    "pool_size": "10",
    "max_overflow": "10",
    "pool_timeout": "30",
    "pool_recycle": "3600",
    "pool_pre_ping": "True",
    "pre_ping_threshold": "0.5",
    "validation_timeout": "5",
    "connect_timeout": "10",
    "statement_timeout": "30000",
    "leak_detection_threshold": "60",
    "slow_checkout_ms": "500",
    "thread_affinity": "True",
    "PIN_SECONDS": "5",
    "CAUSAL": "True",
    "MAX_REPLICA_LAG": "5",
    "CHECK_INTERVAL": "1",
    "BACKOFF": "1",
    "MAX_BACKOFF": "30",
    "COOKIE_NAME": "'poolconf_pin'",
    "HEADER_NAME": "'X-Poolconf-Pin'",
}


def _example(key: str) -> str:
    return _EXAMPLES.get(key, "...")


_RULES: Final[Mapping[str, Rule]] = {
    "pool_size": _integer(1),
    "max_overflow": _integer(0),
    "pool_timeout": _number(0, inclusive=False),
    "pool_recycle": _number(0, inclusive=False, optional=True),
    "pool_pre_ping": _boolean,
    "pre_ping_threshold": _number(0, inclusive=True),
    "validation_timeout": _number(0, inclusive=False),
    "connect_timeout": _number(0, inclusive=False),
    "statement_timeout": _integer(0, optional=True),
    "reset_on_return": _choice(RESET_CHOICES),
    "thread_affinity": _boolean,
    "leak_detection_threshold": _number(0, inclusive=False, optional=True),
    "slow_checkout_ms": _number(0, inclusive=True, optional=True, unit="milliseconds"),
}
assert set(_RULES) == set(POOL_KEYS), "every POOL key needs a rule"

_FLOAT_KEYS: Final = frozenset(
    {
        "pool_timeout",
        "pool_recycle",
        "pre_ping_threshold",
        "validation_timeout",
        "connect_timeout",
        "leak_detection_threshold",
        "slow_checkout_ms",
    }
)


# -- the read/write router ------------------------------------------------------

Balance = Literal["round_robin", "least_busy"]
BALANCE_CHOICES: Final[tuple[str, ...]] = ("round_robin", "least_busy")

#: The read/write router and its middleware, as settings name them.
ROUTER_PATH: Final = "django_poolconf.routers.ReadWriteRouter"
MIDDLEWARE_PATH: Final = "django_poolconf.middleware.ReadWriteMiddleware"


@dataclass(frozen=True, kw_only=True)
class RouterSettings:
    """The validated ``POOLCONF["ROUTER"]`` options of the read/write router.

    Each field is the lower-case name of its key. Durations are seconds. Build one
    with :func:`router_settings`, not by hand.
    """

    balance: Balance = "round_robin"  # how each request picks its replica
    pin_seconds: float | None = None  # after a write, the client reads the primary
    causal: bool = False  # ... only until a replica has replayed that write
    max_replica_lag: float | None = None  # a replica further behind is skipped
    check_interval: float = 1.0  # between two lag measurements of a replica
    backoff: float = 1.0  # an unreachable replica is skipped, then probed
    max_backoff: float = 30.0  # the back-off doubles up to this
    apps: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    cookie_name: str = "poolconf_pin"
    header_name: str = "X-Poolconf-Pin"


#: The keys accepted in ``POOLCONF["ROUTER"]``.
ROUTER_KEYS: Final[tuple[str, ...]] = tuple(
    f.name.upper() for f in fields(RouterSettings)
)


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
        problems = _replica_problems(alias, settings_dict, databases)
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
            or _replica_problems(alias, settings_dict, databases)
        ):
            continue
        test = settings_dict.setdefault("TEST", {})
        if isinstance(test, dict) and test.get("MIRROR") is None:
            test["MIRROR"] = settings_dict["REPLICA_OF"]
            changed.append(alias)
    return changed


_router_cache: tuple[object, RouterSettings] | None = None


def router_settings(
    poolconf: Mapping[str, Any] | None = None,
    *,
    databases: Mapping[str, Any] | None = None,
) -> RouterSettings:
    """Validate ``POOLCONF["ROUTER"]`` and return it, frozen.

    Without arguments, the setting is validated once and the result kept while
    ``POOLCONF`` is unchanged; ``databases`` also checks that ``APPS`` names primaries.

    :raises ImproperlyConfigured: on the first error, with the text of its check.
    """
    global _router_cache
    shared = poolconf is None and databases is None
    if shared:
        poolconf = get_poolconf()
        cached = _router_cache
        if cached is not None and cached[0] is poolconf:
            return cached[1]
    result, problems = validate_router(poolconf, databases=databases)
    errors = [p for p in problems if p.is_error]
    if errors or result is None:
        raise ImproperlyConfigured(str(errors[0]))
    if shared:
        _router_cache = (poolconf, result)
    return result


def validate_router(
    poolconf: object | None = None,
    *,
    databases: Mapping[str, Any] | None = None,
    app_labels: Collection[str] | None = None,
    check_middleware: bool = False,
) -> tuple[RouterSettings | None, list[Problem]]:
    """Validate ``POOLCONF["ROUTER"]``; return its settings (``None`` on error) and every problem.

    ``databases`` checks that ``APPS`` names primaries; ``app_labels`` (the
    installed apps) that it names apps; ``check_middleware`` that ``MIDDLEWARE``
    has the router's middleware when it is needed. ``poolconf`` defaults to the
    setting.
    """
    if poolconf is None:
        poolconf = get_poolconf()
    if not isinstance(poolconf, Mapping):
        return None, [_not_a_dict("E007", "POOLCONF", poolconf)]
    raw = poolconf.get("ROUTER")
    if raw is None:
        return RouterSettings(), []
    where = "POOLCONF['ROUTER']"
    if not isinstance(raw, Mapping):
        return None, [_not_a_dict("E012", where, raw)]
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    for key, value in raw.items():
        rule = _ROUTER_RULES.get(key) if isinstance(key, str) else None
        if rule is None:
            problems.append(_unknown_key("E012", where, key, ROUTER_KEYS))
            continue
        assert isinstance(key, str)
        if key == "APPS":
            apps = _check_apps(f"{where}['APPS']", value, databases, app_labels)
            problems.extend(apps[1])
            if apps[0] is not None:
                values["apps"] = apps[0]
            continue
        problem = rule(f"{where}[{key!r}]", key, value)
        if problem is not None:
            problems.append(dataclasses.replace(problem, id="E013"))
        elif key in _ROUTER_FLOAT_KEYS and value is not None:
            values[key.lower()] = float(value)
        else:
            values[key.lower()] = value

    backoff = values.get("backoff", RouterSettings.backoff)
    max_backoff = values.get("max_backoff", RouterSettings.max_backoff)
    if max_backoff < backoff:
        problems.append(
            Problem(
                "E013",
                f"{where}['MAX_BACKOFF'] must be >= BACKOFF ({backoff:g}), got "
                f"{max_backoff:g}.",
                hint="The back-off starts at BACKOFF and doubles up to MAX_BACKOFF.",
            )
        )
    if values.get("causal") and values.get("pin_seconds") is None:
        problems.append(
            Problem(
                "E015",
                f"{where}['CAUSAL'] needs PIN_SECONDS.",
                hint="Set PIN_SECONDS too, e.g. 60: how long after a write a client's "
                "position is carried across requests.",
            )
        )
    if (
        check_middleware
        and values.get("pin_seconds") is not None
        and not _middleware_installed()
    ):
        problems.append(
            Problem(
                "W003",
                f"{where}['PIN_SECONDS'] is set, but {MIDDLEWARE_PATH!r} is not in "
                "MIDDLEWARE, so no client is pinned across requests.",
                hint="Add it to MIDDLEWARE, near the top: above the middleware whose "
                "writes should pin (sessions, authentication).",
            )
        )
    if any(p.is_error for p in problems):
        return None, problems
    return RouterSettings(**values), problems


def _middleware_installed() -> bool:
    """Whether ``MIDDLEWARE`` has the router's middleware, or a subclass of it."""
    from django.utils.module_loading import import_string

    entries = getattr(settings, "MIDDLEWARE", None) or ()
    if MIDDLEWARE_PATH in entries:
        return True
    wanted = import_string(MIDDLEWARE_PATH)
    for entry in entries:
        try:
            middleware = import_string(entry)
        except ImportError:
            continue  # Django reports it when it loads the middleware
        if isinstance(middleware, type) and issubclass(middleware, wanted):
            return True
    return False


def _check_apps(
    where: str,
    value: object,
    databases: Mapping[str, Any] | None,
    app_labels: Collection[str] | None,
) -> tuple[Mapping[str, str] | None, list[Problem]]:
    """``APPS``: a dict of app label to the alias of a primary."""
    if not isinstance(value, Mapping):
        return None, [_not_a_dict("E013", where, value)]
    problems: list[Problem] = []
    for label, alias in value.items():
        entry = f"{where}[{_show(label)}]"
        if app_labels is not None and label not in app_labels:
            close = difflib.get_close_matches(str(label), list(app_labels), 1)
            problems.append(
                Problem(
                    "E014",
                    f"{where} names the app {_show(label)}, which is not installed.",
                    hint=f"Did you mean {close[0]!r}?"
                    if close
                    else "Use the label of an app in INSTALLED_APPS.",
                )
            )
        if not isinstance(alias, str):
            problems.append(
                Problem(
                    "E014",
                    f"{entry} must name a database alias, got {_show(alias)}.",
                    hint="Map each app label to the alias of its primary, e.g. "
                    "{'analytics': 'analytics'}.",
                )
            )
        elif databases is not None and alias not in databases:
            close = difflib.get_close_matches(alias, [str(a) for a in databases], 1)
            problems.append(
                Problem(
                    "E014",
                    f"{entry} names {alias!r}, which is not in DATABASES.",
                    hint=f"Did you mean {close[0]!r}?"
                    if close
                    else "Map the app to the alias of its primary.",
                )
            )
        elif databases is not None and isinstance(databases[alias], Mapping):
            primary = databases[alias].get("REPLICA_OF")
            if primary is not None:
                problems.append(
                    Problem(
                        "E014",
                        f"{entry} names {alias!r}, which is a replica.",
                        hint=f"Map the app to the primary: {_show(primary)}.",
                    )
                )
    if problems:
        return None, problems
    return MappingProxyType(dict(value)), []


_HTTP_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def _token(where: str, key: str, value: object) -> Problem | None:
    if not isinstance(value, str):
        return _type_problem(where, key, value, "a string", False)
    if _HTTP_TOKEN.match(value):
        return None
    return Problem(
        "E013",
        f"{where} must be a cookie or header name (letters, digits and "
        f"!#$%&'*+-.^_`|~), got {_show(value)}.",
        hint=f"For example: {key}={_example(key)}.",
    )


def _apps_rule(where: str, key: str, value: object) -> Problem | None:
    raise AssertionError("APPS is checked by _check_apps()")  # pragma: no cover


_ROUTER_RULES: Final[Mapping[str, Rule]] = {
    "BALANCE": _choice(BALANCE_CHOICES),
    "PIN_SECONDS": _number(0, inclusive=False, optional=True),
    "CAUSAL": _boolean,
    "MAX_REPLICA_LAG": _number(0, inclusive=False, optional=True),
    "CHECK_INTERVAL": _number(0, inclusive=False),
    "BACKOFF": _number(0, inclusive=False),
    "MAX_BACKOFF": _number(0, inclusive=False),
    "APPS": _apps_rule,
    "COOKIE_NAME": _token,
    "HEADER_NAME": _token,
}
assert set(_ROUTER_RULES) == set(ROUTER_KEYS), "every ROUTER key needs a rule"

_ROUTER_FLOAT_KEYS: Final = frozenset(
    {"PIN_SECONDS", "MAX_REPLICA_LAG", "CHECK_INTERVAL", "BACKOFF", "MAX_BACKOFF"}
)


def _show(value: object) -> str:
    """A short repr for messages: long values are cut, so nothing large leaks."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _choices(values: tuple[str, ...]) -> str:
    return ", ".join(repr(v) for v in values)


# -- POOLCONF["HEALTH"]: the health view, poolstatus and the capacity checks ----------

Detail = Literal["none", "staff", "token"]
DETAIL_CHOICES: Final[tuple[str, ...]] = ("none", "staff", "token")

#: The keys accepted in ``POOLCONF["HEALTH"]``.
HEALTH_KEYS: Final[tuple[str, ...]] = (
    "TIMEOUT",
    "CACHE",
    "DETAIL",
    "TOKEN",
    "MAX_REPLICA_LAG",
    "WORKERS",
    "HOSTS",
)

#: The environment variable read for ``WORKERS`` when the setting is absent; gunicorn
#: and most platforms set it to the number of worker processes.
WORKERS_ENV: Final = "WEB_CONCURRENCY"


@dataclass(frozen=True, kw_only=True)
class HealthSettings:
    """The validated ``POOLCONF["HEALTH"]`` options. Build one with :func:`health_settings`."""

    timeout: float = 5.0  # seconds a health check may take
    cache: float = 1.0  # seconds a probe's result is reused; 0 = never
    detail: Detail = "none"  # who sees errors and hosts: nobody, staff, token holders
    token: str | None = field(default=None, repr=False)  # the bearer token for "token"
    max_replica_lag: float | None = None  # seconds; None = report the lag only
    workers: int | None = None  # worker processes per host; None = unknown
    hosts: int = 1  # hosts (machines, pods) running the same settings


_HEALTH_RULES: Final[Mapping[str, tuple[str, Rule]]] = {
    "TIMEOUT": ("timeout", _number(0, inclusive=False)),
    "CACHE": ("cache", _number(0, inclusive=True)),
    "DETAIL": ("detail", _choice(DETAIL_CHOICES)),
    "MAX_REPLICA_LAG": ("max_replica_lag", _number(0, inclusive=False, optional=True)),
    "WORKERS": ("workers", _integer(1, optional=True)),
    "HOSTS": ("hosts", _integer(1)),
}
_HEALTH_EXAMPLES: Final[Mapping[str, str]] = {
    "TIMEOUT": "5",
    "CACHE": "1",
    "DETAIL": "'staff'",
    "MAX_REPLICA_LAG": "30",
    "WORKERS": "4",
    "HOSTS": "2",
}
_health_cache: tuple[tuple[int, str | None], HealthSettings] | None = None


@receiver(setting_changed)
def _forget_health_settings(*, setting: str, **kwargs: Any) -> None:
    global _health_cache
    if setting == "POOLCONF":
        _health_cache = None


def health_settings() -> HealthSettings:
    """Return the validated ``POOLCONF["HEALTH"]`` options.

    ``WORKERS`` falls back to the ``WEB_CONCURRENCY`` environment variable.

    :raises ImproperlyConfigured: on the first error, with the text of its system check.
    """
    global _health_cache
    poolconf = get_poolconf()
    key = (id(poolconf), os.environ.get(WORKERS_ENV))
    cached = _health_cache
    if cached is not None and cached[0] == key:
        return cached[1]
    result, problems = _validate_health(poolconf)
    if result is None:
        raise ImproperlyConfigured(str(problems[0]))
    _health_cache = (key, result)
    return result


def _validate_health(poolconf: object) -> tuple[HealthSettings | None, list[Problem]]:
    if not isinstance(poolconf, Mapping):
        # Reported as E007 by _project_defaults(); the defaults serve meanwhile.
        return HealthSettings(workers=_workers_from_env()), []
    where = "POOLCONF['HEALTH']"
    raw = poolconf.get("HEALTH")
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        message = _not_a_dict("E016", where, raw).msg
        return None, [
            Problem("E016", message, "Write HEALTH as a dict, e.g. {'TIMEOUT': 5}.")
        ]
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "TOKEN":
            if value is not None and (not isinstance(value, str) or not value):
                # Never shown: the value may be the secret itself.
                problems.append(
                    Problem(
                        "E016",
                        f"{where}['TOKEN'] must be a non-empty string or None, got a "
                        f"value of type {type(value).__name__}.",
                        hint="Read it from the environment, e.g. "
                        "TOKEN=os.environ['HEALTH_TOKEN'].",
                    )
                )
            else:
                values["token"] = value
            continue
        entry = _HEALTH_RULES.get(key) if isinstance(key, str) else None
        if entry is None:
            problems.append(_unknown_key("E016", where, key, HEALTH_KEYS))
            continue
        name, rule = entry
        assert isinstance(key, str)
        bad = rule(f"{where}[{key!r}]", key, value)
        if bad is not None:
            # The generic rules know POOL's examples, not these.
            example = f"{key}={_HEALTH_EXAMPLES[key]}"
            hint = (bad.hint or f"For example: {example}.").replace(
                f"{key}=...", example
            )
            problems.append(Problem("E016", bad.msg, hint))
        elif name in {"timeout", "cache", "max_replica_lag"} and value is not None:
            values[name] = float(value)
        else:
            values[name] = value
    if values.get("detail") == "token" and not values.get("token"):
        problems.append(
            Problem(
                "E016",
                f"{where}['DETAIL'] is 'token' but {where}['TOKEN'] is not set.",
                hint="Set TOKEN to a long random string, e.g. from the environment, or "
                "set DETAIL to 'none' or 'staff'.",
            )
        )
    if problems:
        return None, problems
    if values.get("workers") is None:
        values["workers"] = _workers_from_env()
    return HealthSettings(**values), []


def _workers_from_env() -> int | None:
    value = os.environ.get(WORKERS_ENV, "").strip()
    # An unusable value means "unknown", as when the variable is unset.
    return int(value) if value.isdigit() and int(value) >= 1 else None
