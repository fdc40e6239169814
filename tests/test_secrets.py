"""No object this package creates shows the password in its repr, str or logs.

Error trackers (Sentry) record the reprs of local variables, and debuggers and
``logger.debug("%r", obj)`` show them: a password must never be in one, and the
host never in what anonymous health output is built from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import OperationalError, connection, connections

from django_poolconf import (
    drain,
    engines,
    get_async_engine,
    get_engine,
    pool_stats,
    pool_stats_all,
    probes,
    replicas,
)
from django_poolconf.backends.credentials import ConnectParams
from django_poolconf.health import check_health, runner
from django_poolconf.pool import registry
from django_poolconf.redaction import Secret, fingerprint
from django_poolconf.routing import replicas as routing_replicas

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-marker-5e1f0c2a9d"  # the embedded servers trust loopback: any works


@pytest.fixture(autouse=True)
def known_password() -> Iterator[None]:
    """Every pooled alias connects with PASSWORD, in new pools."""
    connections.close_all()
    engines.dispose_all()
    runner._probes.clear()
    saved = {
        alias: connections.settings[alias].get("PASSWORD")
        for alias in ("default", "replica")
    }
    for alias in saved:
        connections.settings[alias]["PASSWORD"] = PASSWORD
    yield
    connections.close_all()
    engines.dispose_all()
    runner._probes.clear()
    replicas.reset()
    for alias, password in saved.items():
        connections.settings[alias]["PASSWORD"] = password


def _children(obj: Any) -> list[Any]:
    if isinstance(obj, str | bytes | int | float | bool | Secret) or obj is None:
        return []  # a Secret keeps the password for connecting: its repr hides it
    if isinstance(obj, ConnectParams):
        return []  # it keeps the credentials callable for connecting: its repr hides it
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, list | tuple | set | frozenset):
        return list(obj)
    found: list[Any] = []
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        found += [getattr(obj, f.name, None) for f in dataclasses.fields(obj)]
    found += list(getattr(obj, "__dict__", {}).values())
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__"):
                found.append(getattr(obj, name, None))
    if isinstance(obj, BaseException):
        found += [obj.__cause__, obj.__context__, *obj.args]
    return found


def _texts(obj: Any, depth: int, strs: bool) -> Iterator[tuple[str, str]]:
    """The repr (and str) of ``obj`` and of what it holds, ``depth`` levels down."""
    seen: set[int] = set()
    level = [("obj", obj)]
    for _ in range(depth + 1):
        below = []
        for path, item in level:
            if id(item) in seen:
                continue
            seen.add(id(item))
            try:
                texts = [repr(item), str(item)] if strs else [repr(item)]
                children = _children(item)
            except Exception:  # noqa: BLE001 - a lazy attribute of a library
                continue
            for text in texts:
                yield path, text
            below += [(f"{path}/{type(c).__name__}", c) for c in children]
        level = below


def _leaks(
    objects: dict[str, Any], secret: str, depth: int = 3, strs: bool = True
) -> list[str]:
    return [
        f"{name}: {path}"
        for name, obj in objects.items()
        for path, text in _texts(obj, depth, strs)
        if secret in text
    ]


#: Every logger the scans read at DEBUG: ours, SQLAlchemy's (its pool logs what
#: connecting raised) and psycopg's (it logs each connection attempt).
LOGGERS = ("django_poolconf", "sqlalchemy", "psycopg")


def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)


def _log_texts(records: list[logging.LogRecord]) -> list[str]:
    texts = []
    for record in records:
        exc = record.exc_info[1] if record.exc_info else None
        exc_text = record.exc_text or ("" if exc is None else f"{exc!r} {exc}")
        texts.append(f"{record.getMessage()} {record.args!r} {exc_text}")
    return texts


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_no_object_or_log_line_of_the_package_shows_the_password(get, caplog):
    _debug_logs(caplog)
    # Connect, check out and in (parked), take back, close.
    assert get("/item/").status == 200
    connection.ensure_connection()
    connection.close()
    entry = registry._registry["default"]
    lender = entry.lender
    engine = get_engine("default")
    async_engine = get_async_engine("default")
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    report = check_health(["default", "replica"], timeout=5)
    detailed = check_health(["default"], timeout=5, server_view=True)
    # A pooled probe, and one on a connection of its own.
    params = connections["default"].get_connection_params()
    pooled = probes.probe_pooled(lender, params, deadline=_in(5))
    own = probes.probe_server(params, deadline=_in(5), server_view=True)
    # Errors: a server that is not there, a disposed pool, the router's state.
    refused = entry.hooks.__class__("default", {**params, "port": _unused_port()}, None)
    with pytest.raises(OperationalError) as failed:
        refused.connect()
    closed = lender._closed()
    replicas.record_failure(
        "replica", psycopg.OperationalError(f"password {PASSWORD} rejected")
    )
    engines.dispose("default")

    objects = {
        "registry entry": entry,
        "lender": lender,
        "hooks": entry.hooks,
        "settings": entry.settings,
        "engine": engine,
        "async engine": async_engine,
        "stats": pool_stats("default"),
        "all stats": pool_stats_all(),
        "health report": report,
        "detailed health report": detailed,
        "probes": dict(runner._probes),
        "pooled probe": pooled,
        "own probe": own,
        "connection failure": failed.value,
        "pool closed": closed,
        "replica states": replicas.replica_states(),
        "replica monitor": dict(routing_replicas._replicas),
    }
    leaks = _leaks(objects, PASSWORD)
    assert leaks == [], "\n".join(leaks)
    logged = _log_texts(caplog.records)
    assert any("disposed pool" in line for line in logged)  # the logs were captured
    assert [line for line in logged if PASSWORD in line] == []


def test_a_callable_password_shows_in_no_object_log_line_or_output(get, caplog):
    _debug_logs(caplog)
    # The worst case: a callable whose own repr shows the secret.
    token = functools.partial(str, PASSWORD)
    assert PASSWORD in repr(token)
    connections.close_all()
    engines.dispose_all()
    connections.settings["default"]["PASSWORD"] = token
    assert get("/item/").status == 200
    engine = get_engine("default")
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    entry = registry._registry["default"]
    report = check_health(["default"], timeout=5, max_age=0, server_view=True)
    out = io.StringIO()
    call_command("poolstatus", "--database", "default", stdout=out)
    as_json = io.StringIO()
    call_command("poolstatus", "--database", "default", "--json", stdout=as_json)
    drain("default")

    def failing() -> str:
        raise RuntimeError("sealed")

    failed = ConnectParams("default", password=failing)
    with pytest.raises(OperationalError) as raised:
        failed({})

    objects = {
        "registry entry": entry,
        "lender": entry.lender,
        "hooks": entry.hooks,
        "engine": engine,
        "health report": report,
        "probes": dict(runner._probes),
        "credentials": entry.hooks.credentials,
        "credentials failure": raised.value,
    }
    leaks = _leaks(objects, PASSWORD)
    assert leaks == [], "\n".join(leaks)
    assert PASSWORD not in out.getvalue() and PASSWORD not in as_json.getvalue()
    assert ":***@" in out.getvalue()  # the password is there, masked
    logged = _log_texts(caplog.records)
    assert any("drained pool" in line for line in logged)  # the logs were captured
    assert [line for line in logged if PASSWORD in line] == []


def test_no_health_object_shows_the_host(cluster):
    host = str(connections.settings["default"]["HOST"])
    report = check_health(["default", "replica"], timeout=5)
    assert report.status != "unhealthy"

    objects = {
        "health report": report,
        "anonymous payload": report.as_dict(detail=False),
        "probes": dict(runner._probes),
    }
    assert str(report["default"].target).startswith(host)  # not a vacuous scan
    # Reprs only: a Target's str is the address detailed output shows operators.
    leaks = _leaks(objects, host, strs=False)
    assert leaks == [], "\n".join(leaks)


# -- errors an operator can act on: which alias, which host and port, no password -----


@contextlib.contextmanager
def _alias(alias: str, **changes: Any) -> Iterator[None]:
    """A pooled alias copied from ``default``, with ``changes``, for one test."""
    base = connections.settings["default"]
    connections.settings[alias] = {
        **base,
        "TEST": dict(base["TEST"]),
        "PASSWORD": PASSWORD,
        **changes,
    }
    try:
        yield
    finally:
        with contextlib.suppress(AttributeError):
            connections[alias].close()
            del connections[alias]
        del connections.settings[alias]
        engines.dispose(alias)
        runner._probes.pop(alias, None)


def _connect_both_ways(alias: str) -> list[BaseException]:
    """Connect through Django's wrapper and through SQLAlchemy; return both errors."""
    with pytest.raises(OperationalError) as django_path:
        connections[alias].connect()  # ensure_connection() is for test aliases
    with pytest.raises(OperationalError) as sqlalchemy_path:
        get_engine(alias).connect()
    return [django_path.value, sqlalchemy_path.value]


@pytest.mark.parametrize(
    ("host", "says"),
    [
        ("127.0.0.1", "Connection refused"),
        # A mistyped host once read "failed to resolve host '***'".
        ("no-such-host.invalid", "no-such-host.invalid"),
    ],
)
def test_a_failed_connect_names_the_alias_host_and_port_never_the_password(
    caplog, host, says
):
    _debug_logs(caplog)
    port = _unused_port()
    with _alias("unreachable", HOST=host, PORT=str(port)):
        errors = _connect_both_ways("unreachable")

    for error in errors:
        text = str(error)
        assert text.startswith(
            f"Could not open a connection for 'unreachable' (host {host!r}, port "
            f"{port}): "
        ), text
        assert says in text
    leaks = _leaks({"errors": errors}, PASSWORD)
    assert leaks == [], "\n".join(leaks)
    assert [line for line in _log_texts(caplog.records) if PASSWORD in line] == []


@pytest.mark.timeout(60)
def test_network_fault_errors_and_logs_show_no_password(caplog, proxy, pool_options):
    """Refused, stalled, unanswered and dropped connections: errors and DEBUG logs."""
    _debug_logs(caplog)
    pool_options(
        connect_timeout=2, validation_timeout=0.5, pre_ping_threshold=0, read_timeout=1
    )
    errors: list[BaseException] = []
    proxy.refuse()
    with pytest.raises(OperationalError) as refused:
        connection.ensure_connection()
    errors.append(refused.value)
    proxy.restore()
    connection.ensure_connection()
    connection.close()
    proxy.stall()
    with pytest.raises(OperationalError) as stalled:
        connection.ensure_connection()  # the ping, then a connect: both time out
    errors.append(stalled.value)
    proxy.restore()
    connection.ensure_connection()
    proxy.stall()
    with pytest.raises(OperationalError) as unanswered, connection.cursor() as cursor:
        cursor.execute("SELECT 1")  # checked out already: no ping, read_timeout
    errors.append(unanswered.value)
    proxy.restore()
    connection.close()
    connection.ensure_connection()
    proxy.drop()
    with pytest.raises(OperationalError) as dropped, connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    errors.append(dropped.value)
    connection.close()

    assert "Connection refused" in str(refused.value)
    assert "timeout expired" in str(stalled.value)
    assert "within read_timeout=1 s" in str(unanswered.value)
    leaks = _leaks({"errors": errors}, PASSWORD)
    assert leaks == [], "\n".join(leaks)
    logged = _log_texts(caplog.records)
    assert any("Error on connect()" in line for line in logged)  # SQLAlchemy's
    assert [line for line in logged if PASSWORD in line] == []


DSN_SECRET = "dsn-secret-93b1f"


def test_a_database_url_in_host_is_rejected_and_never_shown(caplog):
    from io import StringIO

    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    _debug_logs(caplog)
    url = f"postgres://app:{DSN_SECRET}@db.example.com:5432/app"
    with _alias("pasted", HOST=url, PASSWORD=""):
        with pytest.raises(ImproperlyConfigured) as connecting:
            connections["pasted"].connect()
        with pytest.raises(SystemCheckError) as checking:
            call_command("check", stdout=StringIO(), stderr=StringIO())
        report = check_health(["pasted"], timeout=5, server_view=True)
        table, as_json = StringIO(), StringIO()
        call_command("poolstatus", "--database", "pasted", stdout=table)
        call_command("poolstatus", "--database", "pasted", "--json", stdout=as_json)

    message = str(connecting.value)
    assert message.startswith("DATABASES['pasted']['HOST'] is a database URL")
    assert "databases_from_env()" in message
    assert "django_poolconf.E017" in str(checking.value)
    assert report["pasted"].reason == "misconfigured"
    outputs = {
        "error": message,
        "check": str(checking.value),
        "report": report,
        "json": report.as_dict(detail=True),
        "table": table.getvalue(),
        "poolstatus json": as_json.getvalue(),
    }
    leaks = _leaks(outputs, DSN_SECRET)
    assert leaks == [], "\n".join(leaks)
    assert [line for line in _log_texts(caplog.records) if DSN_SECRET in line] == []


def _in(seconds: float) -> float:
    import time

    return time.monotonic() + seconds


def test_a_fingerprint_tells_passwords_apart_without_showing_them():
    one = fingerprint({"user": "app", "password": PASSWORD})
    assert one == fingerprint({"user": "app", "password": PASSWORD})
    assert one != fingerprint({"user": "app", "password": PASSWORD + "x"})
    assert PASSWORD not in repr(one)
    assert fingerprint({"password": None}) == (("password", None),)


def test_secrets_with_non_ascii_values_compare():
    from django_poolconf.redaction import Secret

    assert Secret("pässwörd-€") == Secret("pässwörd-€")
    assert Secret("pässwörd-€") != Secret("password")


# -- review of issue 14 -------------------------------------------------------------------


def test_a_database_url_in_name_is_never_shown(caplog):
    # libpq expands a dbname that is a URI (or holds "=") into a connection string: a
    # DSN pasted into NAME connects, password and all. Refused as in HOST, or at
    # least never shown, in errors, checks, health output, poolstatus or logs.
    from io import StringIO

    from django.core.exceptions import ImproperlyConfigured

    _debug_logs(caplog)
    base = connections.settings["default"]
    url = (
        f"postgresql://{base['USER']}:{DSN_SECRET}@{base['HOST']}:{base['PORT']}/"
        f"{base['NAME']}"
    )
    outputs: dict[str, Any] = {}
    with _alias("pasted_name", NAME=url, PASSWORD=""):
        try:
            with get_engine("pasted_name").connect() as sa_connection:
                sa_connection.exec_driver_sql("SELECT 1")
        except ImproperlyConfigured as error:
            outputs["error"] = error
        with contextlib.suppress(Exception):
            call_command("check", stdout=StringIO(), stderr=StringIO())
        report = check_health(["pasted_name"], timeout=5, server_view=True)
        table, as_json = StringIO(), StringIO()
        call_command("poolstatus", "--database", "pasted_name", stdout=table)
        call_command(
            "poolstatus", "--database", "pasted_name", "--json", stdout=as_json
        )
        outputs.update(
            {
                "report": report,
                "json": report.as_dict(detail=True),
                "table": table.getvalue(),
                "poolstatus json": as_json.getvalue(),
            }
        )

    assert str(outputs["error"]).startswith(
        "DATABASES['pasted_name']['NAME'] is a database URL, not a database name."
    )
    leaks = _leaks(outputs, DSN_SECRET)
    assert leaks == [], "\n".join(leaks)
    assert [line for line in _log_texts(caplog.records) if DSN_SECRET in line] == []


def test_no_anonymous_health_output_shows_a_multi_host_host(get):
    base = connections.settings["default"]
    host, port = str(base["HOST"]), str(base["PORT"])
    with _alias(
        "multi",
        HOST=f"{host},localhost",
        PORT=f"{port},{port}",
        OPTIONS={**base.get("OPTIONS", {}), "target_session_attrs": "read-write"},
    ):
        report = check_health(["multi"], timeout=5)
        anonymous = report.as_dict(detail=False)

    assert report["multi"].status == "healthy"
    assert str(report["multi"].target).startswith(f"{host}:{port},localhost:{port}")
    text = repr(anonymous)
    assert host not in text and "localhost" not in text and port not in text, text
