"""What every settings domain shares: problems, value rules and the ``POOLCONF`` setting.

A :class:`Problem` is one configuration mistake: a system check id, a message and a
remedy. A :data:`Rule` checks one value and returns a problem or ``None``; the
combinators :func:`integer`, :func:`number`, :func:`boolean` and :func:`choice` build
the rules of :mod:`~django_poolconf.conf.pool`, :mod:`~django_poolconf.conf.router`
and :mod:`~django_poolconf.conf.health`. The messages they write name the setting and
the bad value, and give an example from :data:`EXAMPLES`.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from django.conf import settings
from django.core.signals import setting_changed
from django.db.utils import load_backend
from django.dispatch import receiver
from django.utils.module_loading import import_string

from django_poolconf.redaction import hide_passwords

__all__ = [
    "DAY_S",
    "EXAMPLES",
    "LONGEST_WAIT_S",
    "POOLED_ENGINE_PREFIX",
    "Problem",
    "Rule",
    "SHORTEST_S",
    "YEAR_S",
    "boolean",
    "callable_path",
    "choice",
    "example",
    "get_poolconf",
    "integer",
    "is_pooled",
    "not_a_dict",
    "number",
    "range_problem",
    "show_bound",
    "show_choices",
    "show_value",
    "type_problem",
    "unknown_key",
]

#: The bounds of durations, in seconds. Below a millisecond a duration is zero in
#: effect (no clock or scheduler resolves it); a wait longer than an hour, for a
#: connection or an answer, means something is broken: fail and say so.
SHORTEST_S: Final = 0.001
LONGEST_WAIT_S: Final = 3_600.0
DAY_S: Final = 86_400.0
YEAR_S: Final = 31_536_000.0

#: ENGINE values starting with this are django-poolconf backends.
POOLED_ENGINE_PREFIX: Final = "django_poolconf.backends."


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
    """Whether an alias's ENGINE is one of django-poolconf's backends, or a subclass's.

    A project's own backend (``ENGINE = "myproject.db"``) whose ``DatabaseWrapper``
    subclasses ours is pooled too: it says so with ``poolconf_backend = True``.
    """
    engine = str(settings_dict.get("ENGINE", ""))
    return engine.startswith(POOLED_ENGINE_PREFIX) or _subclasses_ours(engine)


@functools.cache
def _subclasses_ours(engine: str) -> bool:
    if not engine:
        return False
    try:
        wrapper = load_backend(engine).DatabaseWrapper
    except Exception:  # noqa: BLE001 - not importable: not ours, and Django says why
        return False
    return getattr(wrapper, "poolconf_backend", False) is True


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


# -- rules ------------------------------------------------------------------------

# Each rule returns a Problem for a bad value, None for a good one.
Rule = Callable[[str, str, object], "Problem | None"]


def integer(minimum: int, maximum: int, *, optional: bool = False) -> Rule:
    """A rule for an integer from ``minimum`` to ``maximum`` (or ``None`` when ``optional``)."""
    expected = f"an integer from {show_bound(minimum)} to {show_bound(maximum)}"

    def rule(where: str, key: str, value: object) -> Problem | None:
        if optional and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return type_problem(where, key, value, "an integer", optional)
        if not minimum <= value <= maximum:
            return range_problem(where, value, expected, optional)
        return None

    return rule


def number(
    minimum: float, maximum: float, *, optional: bool = False, unit: str = "seconds"
) -> Rule:
    """A rule for a number from ``minimum`` to ``maximum`` in ``unit``, both included.

    NaN, infinities and integers too large for a float are outside every range.
    """
    expected = f"a number from {show_bound(minimum)} to {show_bound(maximum)} ({unit})"

    def rule(where: str, key: str, value: object) -> Problem | None:
        if optional and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return type_problem(where, key, value, f"a number of {unit}", optional)
        try:
            as_float = float(value)
        except OverflowError:  # an int too large for a float
            as_float = math.inf
        # NaN compares false with everything: it fails this test too.
        if not minimum <= as_float <= maximum:
            return range_problem(where, value, expected, optional)
        return None

    return rule


def show_bound(bound: float) -> str:
    """A range's end for messages and docs: ``3600``, ``0.001``, ``2147483647``."""
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


def boolean(where: str, key: str, value: object) -> Problem | None:
    """The rule for ``True`` or ``False``."""
    if isinstance(value, bool):
        return None
    return type_problem(where, key, value, "True or False", False)


def callable_path(signature: str) -> Rule:
    """A rule for a dotted path to a callable, or ``None``; E018 when it cannot be imported.

    The module is imported (as Django's checks import middleware): a typo is
    reported by ``manage.py check``, not by the first connection.
    """

    def rule(where: str, key: str, value: object) -> Problem | None:
        if value is None:
            return None
        if not isinstance(value, str):
            return type_problem(where, key, value, "a dotted path to a callable", True)
        hint = f"Name a function {signature}, e.g. {example(key)}."
        try:
            target = import_string(value)
        except Exception as error:  # noqa: BLE001 - any failure of the user's module
            return Problem(
                "E018",
                f"{where} {show_value(value)} cannot be imported ({type(error).__name__}).",
                hint=hint,
            )
        if not callable(target):
            return Problem(
                "E018",
                f"{where} {show_value(value)} is not callable ({type(target).__name__}).",
                hint=hint,
            )
        return None

    return rule


def choice(choices: tuple[str, ...], *, optional: bool = False) -> Rule:
    """A rule for one of ``choices`` (or None if ``optional``); E004 suggests the nearest."""
    also = " or None" if optional else ""

    def rule(where: str, key: str, value: object) -> Problem | None:
        if (value is None and optional) or (
            isinstance(value, str) and value in choices
        ):
            return None
        close = difflib.get_close_matches(str(value), choices, 1)
        return Problem(
            "E004",
            f"{where} must be one of {show_choices(choices)}{also}, got "
            f"{show_value(value)}.",
            hint=f"Did you mean {close[0]!r}?" if close else None,
        )

    return rule


def type_problem(
    where: str, key: str, value: object, expected: str, optional: bool
) -> Problem:
    """E003: a value of the wrong type, with an example of the right one."""
    also = " or None" if optional else ""
    return Problem(
        "E003",
        f"{where} must be {expected}{also}, got {show_value(value)} "
        f"({type(value).__name__}).",
        hint=(
            f"Write {key} as a Python value, not a string: e.g. {key}={example(key)}."
            if isinstance(value, str)
            else f"For example: {key}={example(key)}."
        ),
    )


def range_problem(where: str, value: object, expected: str, optional: bool) -> Problem:
    """E004: a value of the right type outside its range."""
    also = " or None" if optional else ""
    key = where.rsplit("[", 1)[-1].strip("[]'\"")
    return Problem(
        "E004",
        f"{where} must be {expected}{also}, got {show_value(value)}.",
        hint=f"For example: {key}={example(key)}.",
    )


EXAMPLES: Final[Mapping[str, str]] = {
    "pool_size": "10",
    "max_overflow": "10",
    "pool_timeout": "30",
    "pool_recycle": "3600",
    "pool_pre_ping": "True",
    "pre_ping_threshold": "0.5",
    "validation_timeout": "5",
    "connect_timeout": "10",
    "statement_timeout": "30000",
    "read_timeout": "60",
    "leak_detection_threshold": "60",
    "slow_checkout_ms": "500",
    "thread_affinity": "True",
    "max_waiting": "100",
    "connect_params": "'myproject.db.connect_params'",
    "pgbouncer_prepared_statements": "True",
    "pgbouncer_admin": "'postgresql://stats@pgbouncer.internal:6432/pgbouncer'",
    "PIN_SECONDS": "5",
    "CAUSAL": "True",
    "MAX_REPLICA_LAG": "5",
    "CHECK_INTERVAL": "1",
    "BACKOFF": "1",
    "MAX_BACKOFF": "30",
    "COOKIE_NAME": "'poolconf_pin'",
    "HEADER_NAME": "'X-Poolconf-Pin'",
}


def example(key: str) -> str:
    """An example value of ``key`` for a hint, ``"..."`` when there is none."""
    return EXAMPLES.get(key, "...")


_DICT_EXAMPLES: Final[Mapping[str, str]] = {
    "POOLCONF": "{'PRESET': 'small_api'}",
    "ROUTER": "{'PIN_SECONDS': 5}",
    "APPS": "{'analytics': 'analytics'}",
}


def not_a_dict(check_id: str, where: str, value: object) -> Problem:
    """``where`` should be a dict; the hint shows one."""
    name = where.rsplit("[", 1)[-1].strip("[]'")
    sample = _DICT_EXAMPLES.get(name, "{'pool_size': 10}")
    return Problem(
        check_id,
        f"{where} must be a dict, got {show_value(value)}.",
        hint=f"Write {name} as a dict, e.g. {sample}.",
    )


def unknown_key(
    check_id: str, where: str, key: object, valid: tuple[str, ...]
) -> Problem:
    """An unknown key: the nearest valid one, and every valid one."""
    close = difflib.get_close_matches(str(key), valid, 1)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    return Problem(
        check_id,
        f"{where} has an unknown key {show_value(key)}.",
        hint=f"{hint}Valid keys are {show_choices(valid)}.",
    )


def show_value(value: object) -> str:
    """A short repr for messages: long values are cut, so nothing large leaks.

    What looks like a password (a URL's, a conninfo's ``password=``, a dict's
    ``'PASSWORD'``) is masked first: a value given to the wrong key may hold one.
    """
    text = hide_passwords(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def show_choices(values: tuple[str, ...]) -> str:
    """``values`` as a list for messages: ``'a', 'b'``."""
    return ", ".join(repr(v) for v in values)
