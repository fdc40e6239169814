"""``POOLCONF["ROUTER"]``: the options of the read/write router and its middleware.

:func:`validate_router` reports every problem (E012 to E015, W003) for the system
checks; :func:`router_settings` returns the frozen :class:`RouterSettings` the
router, the middleware and the replica monitor read, and raises the first error.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Final, Literal

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from django_poolconf.conf.rules import (
    DAY_S,
    LONGEST_WAIT_S,
    SHORTEST_S,
    Problem,
    Rule,
    boolean,
    choice,
    example,
    get_poolconf,
    not_a_dict,
    number,
    show_value,
    type_problem,
    unknown_key,
)

__all__ = [
    "BALANCE_CHOICES",
    "MIDDLEWARE_PATH",
    "ROUTER_KEYS",
    "ROUTER_PATH",
    "Balance",
    "RouterSettings",
    "router_settings",
    "validate_router",
]

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
        return None, [not_a_dict("E007", "POOLCONF", poolconf)]
    raw = poolconf.get("ROUTER")
    if raw is None:
        return RouterSettings(), []
    where = "POOLCONF['ROUTER']"
    if not isinstance(raw, Mapping):
        return None, [not_a_dict("E012", where, raw)]
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    for key, value in raw.items():
        rule = _ROUTER_RULES.get(key) if isinstance(key, str) else None
        if rule is None:
            problems.append(unknown_key("E012", where, key, ROUTER_KEYS))
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
                f"{where}['MAX_BACKOFF'] ({max_backoff:g}) must be at least "
                f"{where}['BACKOFF'] ({backoff:g}).",
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
        return None, [not_a_dict("E013", where, value)]
    problems: list[Problem] = []
    for label, alias in value.items():
        entry = f"{where}[{show_value(label)}]"
        if app_labels is not None and label not in app_labels:
            close = difflib.get_close_matches(str(label), list(app_labels), 1)
            problems.append(
                Problem(
                    "E014",
                    f"{where} names the app {show_value(label)}, which is not "
                    "installed.",
                    hint=f"Did you mean {close[0]!r}?"
                    if close
                    else "Use the label of an app in INSTALLED_APPS.",
                )
            )
        if not isinstance(alias, str):
            problems.append(
                Problem(
                    "E014",
                    f"{entry} must name a database alias, got {show_value(alias)}.",
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
                        hint=f"Map the app to the primary: {show_value(primary)}.",
                    )
                )
    if problems:
        return None, problems
    return MappingProxyType(dict(value)), []


#: The longest cookie or header name: the pin's token must fit next to it in a cookie.
MAX_NAME_LENGTH: Final = 64
_COOKIE_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# No underscore: nginx and Django's runserver drop request headers that have one.
_HEADER_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
#: Cookie attributes: Python's cookies refuse them as names.
_COOKIE_ATTRIBUTES: Final = frozenset(
    {"expires", "path", "comment", "domain", "max-age", "secure", "httponly"}
    | {"version", "samesite", "partitioned"}
)
#: Headers that HTTP, Django, browsers or proxies give a meaning: a pin written in one
#: would overwrite it in the response, and WSGI passes some of them under other names.
_RESERVED_HEADERS: Final = frozenset(
    name.lower()
    for name in (
        "Accept",
        "Accept-Charset",
        "Accept-Encoding",
        "Accept-Language",
        "Accept-Ranges",
        "Age",
        "Allow",
        "Alt-Svc",
        "Authorization",
        "Cache-Control",
        "Connection",
        "Cookie",
        "Date",
        "DNT",
        "ETag",
        "Expect",
        "Expires",
        "Forwarded",
        "From",
        "Host",
        "HTTP2-Settings",
        "Keep-Alive",
        "Last-Modified",
        "Link",
        "Location",
        "Origin",
        "Permissions-Policy",
        "Pragma",
        "Priority",
        "Range",
        "Referer",
        "Referrer-Policy",
        "Refresh",
        "Report-To",
        "Retry-After",
        "Server",
        "Server-Timing",
        "Set-Cookie",
        "Strict-Transport-Security",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Upgrade-Insecure-Requests",
        "User-Agent",
        "Vary",
        "Via",
        "Warning",
        "WWW-Authenticate",
        "X-Content-Type-Options",
        "X-CSRFToken",
        "X-Forwarded-For",
        "X-Forwarded-Host",
        "X-Forwarded-Port",
        "X-Forwarded-Proto",
        "X-Frame-Options",
        "X-Real-IP",
        "X-Request-ID",
        "X-Requested-With",
    )  # fmt: skip
)
_RESERVED_HEADER_PREFIXES: Final = (
    "access-control-",
    "content-",
    "cross-origin-",
    "if-",
    "proxy-",
    "sec-",
)


def _cookie_name(where: str, key: str, value: object) -> Problem | None:
    if not isinstance(value, str):
        return type_problem(where, key, value, "a string", False)
    if len(value) > MAX_NAME_LENGTH or not _COOKIE_NAME.match(value):
        return _bad_name(
            where,
            key,
            value,
            f"a cookie name: at most {MAX_NAME_LENGTH} letters, digits and "
            "!#$%&'*+-.^_`|~",
        )
    django_cookies = {
        getattr(settings, name, None)
        for name in ("SESSION_COOKIE_NAME", "CSRF_COOKIE_NAME", "LANGUAGE_COOKIE_NAME")
    }
    if value.lower() in _COOKIE_ATTRIBUTES or value in django_cookies:
        return _taken(where, key, value, "a cookie attribute or Django's own cookies")
    if value.lower().startswith(("__host-", "__secure-")):
        return Problem(
            "E013",
            f"{where} must not start with __Host- or __Secure-, got "
            f"{show_value(value)}.",
            hint="The pin cookie is Secure on HTTPS requests only, and browsers drop "
            f"such a cookie otherwise. For example: {key}={example(key)}.",
        )
    return None


def _header_name(where: str, key: str, value: object) -> Problem | None:
    if not isinstance(value, str):
        return type_problem(where, key, value, "a string", False)
    if len(value) > MAX_NAME_LENGTH or not _HEADER_NAME.match(value):
        return _bad_name(
            where,
            key,
            value,
            f"a header name: at most {MAX_NAME_LENGTH} letters, digits and hyphens",
        )
    lower = value.lower()
    csrf = str(getattr(settings, "CSRF_HEADER_NAME", "HTTP_X_CSRFTOKEN"))
    if (
        lower in _RESERVED_HEADERS
        or lower.startswith(_RESERVED_HEADER_PREFIXES)
        or "HTTP_" + value.upper().replace("-", "_") == csrf
    ):
        return _taken(where, key, value, "a header that HTTP, Django or proxies use")
    return None


def _bad_name(where: str, key: str, value: str, expected: str) -> Problem:
    return Problem(
        "E013",
        f"{where} must be {expected}, got {show_value(value)}.",
        hint=f"For example: {key}={example(key)}.",
    )


def _taken(where: str, key: str, value: str, what: str) -> Problem:
    return Problem(
        "E013",
        f"{where} must not name {what}, got {show_value(value)}.",
        hint=f"The pin would overwrite it, or never be read back. Use a name of your "
        f"own, e.g. {key}={example(key)}.",
    )


def _apps_rule(where: str, key: str, value: object) -> Problem | None:
    raise AssertionError("APPS is checked by _check_apps()")  # pragma: no cover


_ROUTER_RULES: Final[Mapping[str, Rule]] = {
    "BALANCE": choice(BALANCE_CHOICES),
    "PIN_SECONDS": number(SHORTEST_S, DAY_S, optional=True),
    "CAUSAL": boolean,
    "MAX_REPLICA_LAG": number(SHORTEST_S, DAY_S, optional=True),
    # These drive the replica monitor's loop: a hundredth of a second at least.
    "CHECK_INTERVAL": number(0.01, LONGEST_WAIT_S),
    "BACKOFF": number(0.01, LONGEST_WAIT_S),
    "MAX_BACKOFF": number(0.01, DAY_S),
    "APPS": _apps_rule,
    "COOKIE_NAME": _cookie_name,
    "HEADER_NAME": _header_name,
}
assert set(_ROUTER_RULES) == set(ROUTER_KEYS), "every ROUTER key needs a rule"

_ROUTER_FLOAT_KEYS: Final = frozenset(
    {"PIN_SECONDS", "MAX_REPLICA_LAG", "CHECK_INTERVAL", "BACKOFF", "MAX_BACKOFF"}
)
