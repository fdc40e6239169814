"""``POOLCONF["HEALTH"]``: the options of the health view, ``poolstatus`` and the capacity checks.

Mistakes are reported as E016 by :func:`~django_poolconf.conf.pool.validate_poolconf`
and raised by :func:`health_settings`, never when a database connection is made.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from django_poolconf.conf.rules import (
    DAY_S,
    LONGEST_WAIT_S,
    SHORTEST_S,
    Problem,
    Rule,
    choice,
    get_poolconf,
    integer,
    not_a_dict,
    number,
    unknown_key,
)

__all__ = [
    "DETAIL_CHOICES",
    "HEALTH_KEYS",
    "WORKERS_ENV",
    "Detail",
    "HealthSettings",
    "health_settings",
    "validate_health",
]

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

#: The most worker processes per host, and hosts, ``WORKERS`` and ``HOSTS`` may give.
MAX_PROCESSES: Final = 10_000

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
    "TIMEOUT": ("timeout", number(SHORTEST_S, LONGEST_WAIT_S)),
    "CACHE": ("cache", number(0, DAY_S)),
    "DETAIL": ("detail", choice(DETAIL_CHOICES)),
    "MAX_REPLICA_LAG": (
        "max_replica_lag",
        number(SHORTEST_S, DAY_S, optional=True),
    ),
    "WORKERS": ("workers", integer(1, MAX_PROCESSES, optional=True)),
    "HOSTS": ("hosts", integer(1, MAX_PROCESSES)),
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
    result, problems = validate_health(poolconf)
    if result is None:
        raise ImproperlyConfigured(str(problems[0]))
    _health_cache = (key, result)
    return result


def validate_health(poolconf: object) -> tuple[HealthSettings | None, list[Problem]]:
    """Validate ``POOLCONF["HEALTH"]``; return its settings (``None`` on error) and problems."""
    if not isinstance(poolconf, Mapping):
        # Reported as E007 by validate_poolconf(); the defaults serve meanwhile.
        return HealthSettings(workers=_workers_from_env()), []
    where = "POOLCONF['HEALTH']"
    raw = poolconf.get("HEALTH")
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        message = not_a_dict("E016", where, raw).msg
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
            problems.append(unknown_key("E016", where, key, HEALTH_KEYS))
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
