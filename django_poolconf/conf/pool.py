"""The pool options of each alias: ``DATABASES[alias]["POOL"]`` and the project defaults.

:func:`validate_alias` reads one alias's ``POOL`` on top of the project's defaults
(``POOLCONF["PRESET"]``, then ``POOLCONF["POOL"]``), its ``CONN_MAX_AGE``,
``OPTIONS`` and ``REPLICA_OF``, and returns every problem. One validator serves two
surfaces: :mod:`django_poolconf.checks` turns each
:class:`~django_poolconf.conf.rules.Problem` into a system check message, and
:func:`pool_settings` raises the first error as
:class:`~django.core.exceptions.ImproperlyConfigured` when a connection is made.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal

from django.core.exceptions import ImproperlyConfigured

from django_poolconf.backends.postgresql.pgbouncer import (
    admin_console,
    pgbouncer_problems,
)
from django_poolconf.backends.sqlite3.rules import sqlite_problems
from django_poolconf.conf.health import validate_health
from django_poolconf.conf.replicas import replica_problems
from django_poolconf.conf.rules import (
    DAY_S,
    LONGEST_WAIT_S,
    SHORTEST_S,
    YEAR_S,
    Problem,
    Rule,
    boolean,
    callable_path,
    choice,
    get_poolconf,
    integer,
    is_pooled,
    not_a_dict,
    number,
    show_choices,
    show_value,
    unknown_key,
)
from django_poolconf.sizing import AUTO_PRESET, PRESETS, calculate_pool_size

__all__ = [
    "POOLCONF_KEYS",
    "POOL_KEYS",
    "PGBOUNCER_CHOICES",
    "RESET_CHOICES",
    "SCOPE_CHOICES",
    "PoolSettings",
    "CheckoutScope",
    "PgBouncerMode",
    "ResetOnReturn",
    "pool_settings",
    "validate_alias",
    "validate_poolconf",
]

ResetOnReturn = Literal["auto", "rollback", "full"]
CheckoutScope = Literal["request", "transaction"]
SCOPE_CHOICES: Final[tuple[str, ...]] = ("request", "transaction")
RESET_CHOICES: Final[tuple[str, ...]] = ("auto", "rollback", "full")
PgBouncerMode = Literal["transaction", "session"]
PGBOUNCER_CHOICES: Final[tuple[str, ...]] = ("transaction", "session")


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
    read_timeout: float | None = (
        None  # seconds a statement waits for the server's bytes
    )
    reset_on_return: ResetOnReturn = "auto"
    thread_affinity: bool = True  # a thread keeps its connection between requests
    checkout_scope: CheckoutScope = "request"  # or held only while it works
    leak_detection_threshold: float | None = None  # seconds held before a warning
    slow_checkout_ms: float | None = None  # milliseconds waited before a warning
    max_waiting: int = 0  # checkouts that may wait at once; 0 = no limit
    connect_params: str | None = None  # dotted path: (alias, params) -> params
    pgbouncer: PgBouncerMode | None = None  # PgBouncer's pool_mode, if behind one
    # PgBouncer 1.21+ with max_prepared_statements: prepared statements may be used.
    pgbouncer_prepared_statements: bool = False
    # A URL of PgBouncer's admin console; not in the repr: it may hold a password.
    pgbouncer_admin: str | None = field(default=None, repr=False)
    replica_of: str | None = field(default=None)

    @property
    def capacity(self) -> int:
        """The most connections this alias's pool opens at once."""
        return self.pool_size + self.max_overflow

    @property
    def reset_policy(self) -> ResetOnReturn:
        """The reset each return gets: ``reset_on_return``, but ``"auto"`` behind
        PgBouncer in transaction mode is ``"rollback"``.

        There the server connection is shared between transactions: no session of
        this client outlives one, so there is nothing to ``DISCARD``, and a
        ``DISCARD ALL`` would only reach whichever server connection PgBouncer lends.
        """
        if self.pgbouncer == "transaction" and self.reset_on_return == "auto":
            return "rollback"
        return self.reset_on_return


#: The keys accepted in ``POOL`` and in ``POOLCONF["POOL"]``.
POOL_KEYS: Final[tuple[str, ...]] = tuple(
    f.name for f in fields(PoolSettings) if f.name not in {"alias", "replica_of"}
)
POOLCONF_KEYS: Final[tuple[str, ...]] = ("PRESET", "POOL", "ROUTER", "HEALTH")


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
        problems.append(not_a_dict("E001", f"{where}['POOL']", raw))
        raw = {}
    values = dict(defaults)
    values.update(_check_pool_dict(f"{where}['POOL']", raw, problems))

    max_age = settings_dict.get("CONN_MAX_AGE", 0)
    if max_age != 0:
        problems.append(
            Problem(
                "W007",
                f"{where}['CONN_MAX_AGE'] is {show_value(max_age)}: each thread keeps "
                "its connection checked out of the pool between requests, so threads "
                "beyond pool_size + max_overflow wait for one.",
                hint="Remove CONN_MAX_AGE: with thread_affinity (the default) a "
                "thread's next request takes its connection back at no cost, and "
                "other threads may use it in between.",
            )
        )
        if values.get("checkout_scope") == "transaction":
            problems.append(
                Problem(
                    "W010",
                    f"{where}['POOL']['checkout_scope'] is 'transaction', but "
                    f"{where}['CONN_MAX_AGE'] is {show_value(max_age)}, which keeps "
                    "each thread's connection checked out: it is held through "
                    "requests, not only while it works.",
                    hint="Remove CONN_MAX_AGE, or the checkout_scope.",
                )
            )
    options = settings_dict.get("OPTIONS") or {}
    django_pool = options.get("pool") if isinstance(options, Mapping) else None
    if django_pool is not None:
        if django_pool:
            problems.append(
                Problem(
                    "W008",
                    f"{where}['OPTIONS']['pool'] is set: Django's own pool serves "
                    "this alias, and its POOL is ignored.",
                    hint="Remove OPTIONS['pool'] to use django-poolconf's pool, sized "
                    "with POOL; two pools would pool twice.",
                )
            )
        else:
            problems.append(
                Problem(
                    "W009",
                    f"{where}['OPTIONS']['pool'] is {show_value(django_pool)}: this "
                    "alias opens a new connection per request, and its POOL is "
                    "ignored.",
                    hint="Remove OPTIONS['pool'] to use django-poolconf's pool.",
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

    problems.extend(pgbouncer_problems(where, settings_dict, values))
    problems.extend(sqlite_problems(where, settings_dict, raw, values))

    host = settings_dict.get("HOST")
    name = settings_dict.get("NAME")
    # NAME too: the server's "database ... does not exist" would repeat it.
    pasted = (
        "HOST"
        if isinstance(host, str) and _is_url(host)
        else "NAME"
        if isinstance(name, str) and "://" in name
        else None
    )
    if pasted is not None:
        what = "host" if pasted == "HOST" else "database"
        alone = (
            "the server's name or address" if what == "host" else "the database's name"
        )
        problems.append(
            Problem(
                "E017",
                # Not shown: a URL pasted here usually carries its password.
                f"{where}[{pasted!r}] is a database URL, not a {what} name.",
                hint=f"Set {pasted} to {alone} alone, or build "
                "DATABASES from the URL with django_poolconf.databases_from_env() (or "
                "database_from_url()), which fills NAME, USER, PASSWORD, HOST and "
                "PORT from it.",
            )
        )

    problems.extend(replica_problems(alias, settings_dict, databases))
    replica_of = settings_dict.get("REPLICA_OF")
    if not isinstance(replica_of, str) or replica_of == alias:
        replica_of = None

    if any(p.is_error for p in problems):
        return None, problems
    return PoolSettings(alias=alias, replica_of=replica_of, **values), problems


def _is_url(host: str) -> bool:
    """Whether HOST holds a URL or ``user:password@host`` rather than host names.

    libpq's HOST is a comma-separated list of names, addresses and socket
    directories; only an abstract Unix socket starts with ``@``.
    """
    return any("://" in part or "@" in part[1:] for part in host.split(","))


def validate_poolconf(poolconf: object | None = None) -> list[Problem]:
    """Return the problems of the ``POOLCONF`` setting alone."""
    if poolconf is None:
        poolconf = get_poolconf()
    problems = _project_defaults(poolconf)[1]
    # Only here, not in validate_alias(): a mistake in the health settings must not
    # stop the database connections; the health view and command raise it instead.
    return problems + validate_health(poolconf)[1]


def _project_defaults(poolconf: object) -> tuple[dict[str, Any], list[Problem]]:
    """Apply ``POOLCONF``: the preset first, then ``POOLCONF["POOL"]``."""
    problems: list[Problem] = []
    if not isinstance(poolconf, Mapping):
        problems.append(not_a_dict("E007", "POOLCONF", poolconf))
        return {}, problems
    for key in poolconf:
        if key not in POOLCONF_KEYS:
            problems.append(unknown_key("E007", "POOLCONF", key, POOLCONF_KEYS))

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
                    f"POOLCONF['PRESET'] must be one of {show_choices(choices)}, got "
                    f"{show_value(preset)}.",
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
            problems.append(not_a_dict("E001", "POOLCONF['POOL']", raw))
    return defaults, problems


def _check_pool_dict(
    where: str, raw: Mapping[object, Any], problems: list[Problem]
) -> dict[str, Any]:
    """Validate each key of a POOL dict; return the good values."""
    good: dict[str, Any] = {}
    for key, value in raw.items():
        rule = _RULES.get(key) if isinstance(key, str) else None
        if rule is None:
            problems.append(unknown_key("E002", where, key, POOL_KEYS))
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


#: The most connections ``pool_size``, and ``max_overflow``, may each ask of one process.
MAX_CONNECTIONS: Final = 10_000
#: The most checkouts ``max_waiting`` may let wait at once in one process.
MAX_WAITING: Final = 1_000_000
#: PostgreSQL's own limit: statement_timeout is a 32-bit integer of milliseconds.
MAX_STATEMENT_TIMEOUT_MS: Final = 2_147_483_647

_RULES: Final[Mapping[str, Rule]] = {
    "pool_size": integer(1, MAX_CONNECTIONS),
    "max_overflow": integer(0, MAX_CONNECTIONS),
    "pool_timeout": number(SHORTEST_S, LONGEST_WAIT_S),
    "pool_recycle": number(SHORTEST_S, YEAR_S, optional=True),
    "pool_pre_ping": boolean,
    "pre_ping_threshold": number(0, DAY_S),
    "validation_timeout": number(SHORTEST_S, LONGEST_WAIT_S),
    "connect_timeout": number(SHORTEST_S, LONGEST_WAIT_S),
    "statement_timeout": integer(0, MAX_STATEMENT_TIMEOUT_MS, optional=True),
    # Below a second it would cut ordinary statements on a busy server.
    "read_timeout": number(1, DAY_S, optional=True),
    "reset_on_return": choice(RESET_CHOICES),
    "thread_affinity": boolean,
    "checkout_scope": choice(SCOPE_CHOICES),
    "leak_detection_threshold": number(SHORTEST_S, YEAR_S, optional=True),
    "slow_checkout_ms": number(
        0, LONGEST_WAIT_S * 1000, optional=True, unit="milliseconds"
    ),
    "max_waiting": integer(0, MAX_WAITING),
    "connect_params": callable_path("(alias, params) -> params"),
    "pgbouncer": choice(PGBOUNCER_CHOICES, optional=True),
    "pgbouncer_prepared_statements": boolean,
    "pgbouncer_admin": admin_console,
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
        "read_timeout",
    }
)
