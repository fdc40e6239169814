"""Build ``DATABASES`` entries from database URLs, with dj-database-url underneath.

Pool options may ride in the URL's query string
(``postgres://app@db/app?pool_size=10&pool_timeout=5``); they are validated like any
other. Messages never repeat the URL, which may carry a password.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured

from django_poolconf.conf.pool import POOL_KEYS, validate_alias

__all__ = ["database_from_url", "databases_from_env"]

POSTGRES_ENGINE: Final = "django_poolconf.backends.postgresql"
POSTGRES_SCHEMES: Final = frozenset({"postgres", "postgresql", "pgsql"})

# How a query string's text is read for each pool option; the others are numbers.
_INT_KEYS: Final = frozenset(
    {"pool_size", "max_overflow", "statement_timeout", "max_waiting"}
)
_BOOL_KEYS: Final = frozenset(
    {"pool_pre_ping", "thread_affinity", "pgbouncer_prepared_statements"}
)
_OPTIONAL_KEYS: Final = frozenset(
    {
        "pool_recycle",
        "statement_timeout",
        "read_timeout",
        "leak_detection_threshold",
        "slow_checkout_ms",
        "connect_params",
        "pgbouncer",
        "pgbouncer_admin",
    }
)
_TEXT_KEYS: Final = frozenset(
    {
        "reset_on_return",
        "checkout_scope",
        "connect_params",
        "pgbouncer",
        "pgbouncer_admin",
    }
)
#: How a URL begins; a part of a list of URLs that does not is another host.
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})


def database_from_url(
    url: str,
    *,
    alias: str = "default",
    replica_of: str | None = None,
    **pool: Any,
) -> dict[str, Any]:
    """Return one pooled ``DATABASES`` entry for a PostgreSQL URL.

    Pool options come from ``pool`` keyword arguments, overridden by those in the
    URL's query string (deploy-time settings win over code). ``alias`` names the entry
    in error messages. With ``replica_of``,
    the entry is a replica of that alias and mirrors it in tests.

    :raises ImproperlyConfigured: for an unsupported scheme, a malformed URL or a bad
        pool option; the message never contains the URL.
    """
    where = f"The database URL of {alias!r}"
    encode = (
        "Percent-encode special characters in the user and password "
        "(@ is %40, / is %2F, : is %3A, # is %23)."
    )
    hosts: list[tuple[str, str]] | None = None
    try:
        split = urlsplit(url)
        # An unencoded "/", "?" or "#" in the password ends the netloc early and
        # leaves the "@host" part in the path, the query or the fragment.
        if "@" in split.path or "@" in split.query or split.fragment:
            raise ValueError
        userinfo, at, netloc_hosts = split.netloc.rpartition("@")
        if "," in netloc_hosts:
            # libpq's multi-host URL (host1:port1,host2:port2): dj-database-url
            # parses one host, given the first; HOST and PORT become the lists.
            hosts = _host_list(netloc_hosts)
            split = split._replace(netloc=f"{userinfo}{at}localhost")
        split.port  # noqa: B018 - urlsplit checks the port lazily
    except ValueError:
        if _unencoded_admin_url(url):
            encode = (
                "Its pgbouncer_admin query parameter holds a URL that is not "
                "encoded. Percent-encode the whole admin console URL "
                "(urllib.parse.quote(url, safe='')): its @ is %40, : is %3A, / is "
                "%2F."
            )
        raise ImproperlyConfigured(f"{where} is not a valid URL. {encode}") from None
    if split.scheme not in POSTGRES_SCHEMES:
        raise ImproperlyConfigured(
            f"{where} has the scheme {split.scheme!r}; django-poolconf supports "
            "postgres://, postgresql:// and pgsql:// URLs."
        )
    pool_options: dict[str, Any] = {}
    passed: list[tuple[str, str]] = []
    for key, value in parse_qsl(split.query, keep_blank_values=True):
        if key in POOL_KEYS:
            pool_options[key] = _coerce(where, key, value)
        elif key.startswith("pool_") or _looks_like_pool_key(key):
            close = difflib.get_close_matches(key, POOL_KEYS, 1)
            suggestion = f" Did you mean {close[0]!r}?" if close else ""
            raise ImproperlyConfigured(
                f"{where} has an unknown pool option {key!r} in its query string."
                f"{suggestion}"
            )
        else:
            passed.append((key, value))

    import dj_database_url

    try:
        config: dict[str, Any] = dict(
            dj_database_url.parse(
                urlunsplit(split._replace(query=urlencode(passed))),
                engine=POSTGRES_ENGINE,
                conn_max_age=0,
            )
        )
    except ValueError:  # dj_database_url.ParseError and friends
        raise ImproperlyConfigured(f"{where} is not a valid database URL.") from None
    if hosts is not None:
        config["HOST"] = ",".join(host for host, _ in hosts)
        config["PORT"] = ",".join(port for _, port in hosts)
    config["POOL"] = {**pool, **pool_options}
    if replica_of is not None:
        config["REPLICA_OF"] = replica_of
        config["TEST"] = {"MIRROR": replica_of}
    # POOLCONF is not consulted: this runs inside settings modules, before Django's
    # settings exist. Presets and project defaults apply when the pool is built.
    _, problems = validate_alias(alias, config, poolconf={})
    errors = [str(problem) for problem in problems if problem.is_error]
    if errors:
        raise ImproperlyConfigured(errors[0])
    return config


def databases_from_env(
    environ: Mapping[str, str] | None = None,
    *,
    url_variable: str = "DATABASE_URL",
    replica_variable: str = "DATABASE_REPLICA_URLS",
    replica_prefix: str = "replica",
    **pool: Any,
) -> dict[str, dict[str, Any]]:
    """Return ``DATABASES`` from ``DATABASE_URL`` and ``DATABASE_REPLICA_URLS``.

    The primary is ``"default"``; the comma-separated replica URLs become
    ``"replica1"``, ``"replica2"``, ... each with ``REPLICA_OF = "default"``. Keyword
    arguments are pool options for every alias; options in a URL's query string
    override them for that alias.

    :raises ImproperlyConfigured: when ``DATABASE_URL`` is missing or a URL is bad.
    """
    if environ is None:
        environ = os.environ
    url = environ.get(url_variable, "").strip()
    if not url:
        raise ImproperlyConfigured(
            f"The environment variable {url_variable} is not set. Set it to the "
            "primary database's URL, e.g. postgres://user:password@host:5432/name."
        )
    databases = {"default": database_from_url(url, alias="default", **pool)}
    # Commas separate the URLs, and the hosts of a multi-host URL too: a part with
    # no scheme after a URL is more of its hosts.
    replica_urls: list[str] = []
    for part in environ.get(replica_variable, "").split(","):
        part = part.strip()
        if not part:
            continue
        if replica_urls and not _SCHEME.match(part):
            replica_urls[-1] = f"{replica_urls[-1]},{part}"
        else:
            replica_urls.append(part)
    for number, replica_url in enumerate(replica_urls, start=1):
        alias = f"{replica_prefix}{number}"
        databases[alias] = database_from_url(
            replica_url, alias=alias, replica_of="default", **pool
        )
    return databases


def _unencoded_admin_url(url: str) -> bool:
    """Whether the only ``@`` after the URL's netloc is in its ``pgbouncer_admin`` parameter.

    Then the outer URL is sound, and the admin console's URL inside it was not
    percent-encoded; an ``@`` elsewhere is the outer password's.
    """
    _, _, after = url.partition("?")
    if not after or "@" not in after:
        return False
    parts = after.split("&")
    admin = [part for part in parts if part.startswith("pgbouncer_admin=")]
    others = [part for part in parts if not part.startswith("pgbouncer_admin=")]
    path = url.partition("?")[0].partition("://")[2].partition("/")[2]
    return bool(admin) and "@" not in path and not any("@" in p for p in others)


def _host_list(text: str) -> list[tuple[str, str]]:
    """The hosts and ports of a multi-host netloc; a missing port is ``""`` (libpq's default).

    :raises ValueError: for an empty host or a port that is not one.
    """
    hosts = []
    for item in text.split(","):
        if item.startswith("["):  # an IPv6 address
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError
            port = rest[1:]
        else:
            host, _, port = item.partition(":")
        if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            raise ValueError
        hosts.append((unquote(host), port))
    return hosts


def _coerce(where: str, key: str, raw: str) -> Any:
    text = raw.strip()
    if key in _OPTIONAL_KEYS and text.lower() in {"", "none", "null"}:
        return None
    if key in _TEXT_KEYS:
        return text
    if key in _BOOL_KEYS:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ImproperlyConfigured(f"{where} sets {key}={raw!r}; use true or false.")
    try:
        return int(text) if key in _INT_KEYS else float(text)
    except ValueError:
        kind = "an integer" if key in _INT_KEYS else "a number"
        raise ImproperlyConfigured(
            f"{where} sets {key}={raw!r}; it must be {kind}."
        ) from None


def _looks_like_pool_key(key: str) -> bool:
    """A near miss of a pool option that is not a libpq or Django option either."""
    if not difflib.get_close_matches(key, POOL_KEYS, 1, cutoff=0.85):
        return False
    from psycopg import pq

    libpq_keywords = {option.keyword.decode() for option in pq.Conninfo.get_defaults()}
    return key not in libpq_keywords
