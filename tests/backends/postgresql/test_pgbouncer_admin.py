"""PgBouncer's admin console: ``SHOW POOLS`` in ``poolstatus``, and the capacity plan.

``POOL["pgbouncer_admin"]`` names the admin console (the ``pgbouncer`` database of
the same PgBouncer) with a URL. The fixture's PgBouncer lists the suite's user in
``admin_users`` and trusts it, so the URL's password is never sent: the tests give
one to see that no output shows it.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from io import StringIO
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import connections

from django_poolconf.health import runner
from django_poolconf.health.capacity import deployment_problems
from tests.conftest import wsgi_get
from tests.health.test_runner import MARGIN, TIMEOUT, use_health
from tests.pgbouncer import POOL_SIZES, PgBouncer

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "adm1n-s3cret"


@pytest.fixture(autouse=True)
def fresh_probes():
    runner._probes.clear()
    with use_health():
        yield
    runner._probes.clear()


def admin_url(bouncer: PgBouncer) -> str:
    user = connections.settings["default"]["USER"]
    return f"postgresql://{user}:{SECRET}@127.0.0.1:{bouncer.port}/pgbouncer"


def _through(bouncer: PgBouncer) -> psycopg.Connection[Any]:
    """A plain client connection through PgBouncer, outside the pool."""
    settings_dict = connections["default"].settings_dict
    return psycopg.connect(
        host="127.0.0.1",
        port=bouncer.port,
        user=settings_dict["USER"],
        dbname=settings_dict["NAME"],
        autocommit=True,
    )


def poolstatus(*args: str) -> str:
    out = StringIO()
    call_command("poolstatus", *args, stdout=out)
    return out.getvalue()


def _row(output: str, first: str) -> list[str]:
    return next(
        line.split() for line in output.splitlines() if line.split()[:1] == [first]
    )


def test_poolstatus_shows_pgbouncers_pools_beside_the_apps(
    pgbouncer, pool_options, test_db_name
):
    pool_options(pgbouncer_admin=admin_url(pgbouncer))
    wsgi_get("/item/")  # one idle client connection of this process's pool

    output = poolstatus("--database", "default")

    assert SECRET not in output
    assert re.search(
        rf"PgBouncer at 127\.0\.0\.1:{pgbouncer.port} \(version 1\.\d+\.\d+, "
        rf"{pgbouncer.mode} mode, max_client_conn=1000, "
        rf"default_pool_size={POOL_SIZES[pgbouncer.mode]}\), SHOW POOLS:",
        output,
    )
    header = _row(output, "DATABASE")
    assert header == [
        "DATABASE", "USER", "CL_ACTIVE", "CL_WAITING", "SV_ACTIVE", "SV_IDLE", "MAXWAIT",
    ]  # fmt: skip
    row = _row(output, test_db_name)
    assert row[1] == connections.settings["default"]["USER"]
    assert int(row[2]) >= 1  # the pool's idle connection, at least
    assert int(row[3]) >= 0  # the command's probe may be waiting for its server
    assert re.fullmatch(r"\d+(\.\d+)? s", " ".join(row[6:]))
    # The admin console's own pseudo-database is not one of the app's pools.
    assert not any(line.split()[:1] == ["pgbouncer"] for line in output.splitlines())


def test_poolstatus_json_carries_pgbouncers_pools(
    pgbouncer, pool_options, test_db_name
):
    pool_options(pgbouncer_admin=admin_url(pgbouncer))
    wsgi_get("/item/")

    text = poolstatus("--database", "default", "--json")

    assert SECRET not in text
    shown = json.loads(text)["databases"]["default"]["pgbouncer"]
    assert shown["server"] == f"127.0.0.1:{pgbouncer.port}"
    assert shown["pool_mode"] == pgbouncer.mode
    assert shown["max_client_conn"] == 1000
    assert shown["default_pool_size"] == POOL_SIZES[pgbouncer.mode]
    assert shown["version"].startswith("1.")
    assert shown["error"] is None
    [pool] = [p for p in shown["pools"] if p["database"] == test_db_name]
    assert set(pool) == {
        "database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle",
        "maxwait",
    }  # fmt: skip
    assert pool["cl_active"] >= 1
    assert pool["cl_waiting"] >= 0


def test_poolstatus_shows_clients_waiting_for_a_server_connection(
    pgbouncer, pool_options, test_db_name
):
    pool_options(pgbouncer_admin=admin_url(pgbouncer))
    # Every server connection PgBouncer may open for the database, each held by a
    # client in a transaction: the next client's query waits in PgBouncer.
    holders = [_through(pgbouncer) for _ in range(POOL_SIZES[pgbouncer.mode])]
    waiter = _through(pgbouncer)
    thread = threading.Thread(target=waiter.execute, args=("SELECT 1",))
    try:
        for holder in holders:
            holder.execute("BEGIN")
            holder.execute("SELECT 1")
        thread.start()
        time.sleep(0.3)

        shown = json.loads(poolstatus("--database", "default", "--json"))

        [pool] = [
            p
            for p in shown["databases"]["default"]["pgbouncer"]["pools"]
            if p["database"] == test_db_name
        ]
        assert pool["cl_waiting"] >= 1
        assert pool["sv_active"] == POOL_SIZES[pgbouncer.mode]
        assert pool["sv_idle"] == 0
        assert pool["maxwait"] >= 0.2
    finally:
        for holder in holders:
            holder.close()
        thread.join(30)
        waiter.close()


def test_health_view_does_not_ask_the_admin_console(pgbouncer, pool_options):
    pool_options(pgbouncer_admin=admin_url(pgbouncer))

    payload = wsgi_get("/health/db").json()

    assert payload["databases"]["default"]["status"] == "healthy"
    assert payload["databases"]["default"]["pgbouncer"] is None


def test_an_admin_console_that_refuses_is_reported_without_secrets(
    pgbouncer, pool_options
):
    user = connections.settings["default"]["USER"]
    # A database PgBouncer's admin console is not: refused by PgBouncer.
    pool_options(pgbouncer_admin=f"postgresql://{user}:{SECRET}@127.0.0.1:1/pgbouncer")

    output = poolstatus("--database", "default")
    text = poolstatus("--database", "default", "--json")

    assert SECRET not in output + text
    assert "PgBouncer's admin console did not answer" in output
    assert json.loads(text)["databases"]["default"]["pgbouncer"]["error"]
    # The app's own pool is healthy: only the admin console failed.
    assert json.loads(text)["databases"]["default"]["status"] == "healthy"


def test_an_admin_console_that_hangs_costs_at_most_the_timeout(pgbouncer, pool_options):
    user = connections.settings["default"]["USER"]
    with socket.create_server(("127.0.0.1", 0)) as hung:
        port = hung.getsockname()[1]
        pool_options(
            pgbouncer_admin=f"postgresql://{user}:{SECRET}@127.0.0.1:{port}/pgbouncer"
        )
        started = time.monotonic()
        output = poolstatus("--database", "default")
        elapsed = time.monotonic() - started

    assert elapsed < TIMEOUT + MARGIN
    assert (
        f"PgBouncer's admin console did not answer (127.0.0.1:{port}): no answer "
        "within the timeout" in output
    )
    assert SECRET not in output


# -- the capacity plan against PgBouncer's limits ----------------------------------


def _plan(output: str, bouncer: PgBouncer) -> list[str]:
    return _row(output, f"127.0.0.1:{bouncer.port}")


def test_capacity_compares_the_worst_case_with_max_client_conn(pgbouncer, pool_options):
    pool_options(pgbouncer_admin=admin_url(pgbouncer))

    crowded = poolstatus("--database", "default", "--workers", "200")
    few = poolstatus("--database", "default", "--workers", "2")

    # default's 4 + 4 per process (analytics goes to the server directly).
    row = _plan(crowded, pgbouncer)
    assert row[:6] == [
        f"127.0.0.1:{pgbouncer.port}",
        "default",
        "8",
        "200",
        "1",
        "1600",
    ]
    if pgbouncer.mode == "transaction":
        assert row[6:] == ["1000", "EXCEEDS", "max_client_conn"]
    else:
        # In session mode each client connection holds a server connection.
        assert row[6:] == ["20", "EXCEEDS", "default_pool_size"]
    assert _plan(few, pgbouncer)[5:] == [
        "16",
        str(min(1000, 20 if pgbouncer.mode == "session" else 1000)),
        "fits",
    ]


def test_capacity_in_session_mode_needs_a_server_connection_per_client(
    pgbouncer, pool_options
):
    pool_options(pgbouncer_admin=admin_url(pgbouncer))

    row = _plan(poolstatus("--database", "default", "--workers", "3"), pgbouncer)

    # 24 client connections: within max_client_conn, beyond default_pool_size (20).
    if pgbouncer.mode == "transaction":
        assert row[5:] == ["24", "1000", "fits"]
    else:
        assert row[5:] == ["24", "20", "EXCEEDS", "default_pool_size"]


def test_capacity_behind_pgbouncer_without_the_admin_console_is_unknown(pgbouncer):
    output = poolstatus("--database", "default", "--workers", "200")

    # Not the server's max_connections: PgBouncer's limits apply, and are not known.
    row = _plan(output, pgbouncer)
    assert row[5:] == [
        "1600",
        "-",
        "unknown",
        "(behind",
        "PgBouncer:",
        "set",
        "pgbouncer_admin)",
    ]


def test_deploy_check_warns_against_max_client_conn(pgbouncer, pool_options):
    pool_options(pgbouncer_admin=admin_url(pgbouncer))

    with use_health(WORKERS=200):
        problems = deployment_problems(["default"])

    [problem] = [p for p in problems if p.id == "W004"]
    limit = (
        "max_client_conn=1000"
        if pgbouncer.mode == "transaction"
        else (f"default_pool_size={POOL_SIZES['session']}")
    )
    assert limit in problem.msg
    assert "PgBouncer" in problem.msg
    assert SECRET not in str(problem)


# -- what POOL declares of PgBouncer, checked against its admin console -------------


def test_deploy_check_warns_when_pgbouncer_runs_in_another_mode(
    pgbouncer, pool_options
):
    other = "session" if pgbouncer.mode == "transaction" else "transaction"
    pool_options(pgbouncer=other, pgbouncer_admin=admin_url(pgbouncer))

    problems = deployment_problems(["default"])

    [problem] = [p for p in problems if p.id == "W016"]
    assert problem.msg == (
        f"DATABASES['default']['POOL']['pgbouncer'] is {other!r}, but PgBouncer at "
        f"127.0.0.1:{pgbouncer.port} runs in pool_mode {pgbouncer.mode!r}."
    )
    assert f"  Warning: {problem}" in poolstatus("--database", "default")


def test_deploy_check_warns_when_declared_prepared_statements_are_not_kept(
    pgbouncer, pool_options
):
    pool_options(
        pgbouncer_prepared_statements=True, pgbouncer_admin=admin_url(pgbouncer)
    )

    problems = deployment_problems(["default"])

    # PgBouncer 1.18 (Debian's) has no max_prepared_statements: 1.21 added it.
    [problem] = [p for p in problems if p.id == "W016"]
    assert "does not keep prepared statements (max_prepared_statements=" in problem.msg
    assert SECRET not in str(problem)


# -- review 16 ----------------------------------------------------------------------


def test_an_admin_url_of_another_type_is_never_shown(pgbouncer, pool_options):
    # bytes: E003 showed the value, password and all, everywhere a check message goes.
    from django.core import checks

    user = connections.settings["default"]["USER"]
    url = f"postgresql://{user}:{SECRET}@127.0.0.1:{pgbouncer.port}/pgbouncer"
    pool_options(pgbouncer_admin=url.encode())
    out, err = StringIO(), StringIO()
    call_command("poolstatus", "--database", "default", stdout=out, stderr=err)
    call_command(
        "poolstatus", "--database", "default", "--json", stdout=out, stderr=err
    )
    text = out.getvalue() + err.getvalue()
    text += wsgi_get("/health/db", detail="1").body.decode()
    messages = checks.run_checks(include_deployment_checks=True)
    text += "\n".join(str(message) for message in messages)
    assert "pgbouncer_admin'] must be a URL or None, got a bytes" in text
    assert SECRET not in text


@pytest.fixture
def per_database_bouncer(db):
    """A PgBouncer in session mode (default_pool_size=20) whose [databases] entry runs
    the app's database in transaction mode with pool_size=4."""
    from django_poolconf import engines

    settings_dict = connections.settings["default"]
    original = settings_dict["HOST"], settings_dict["PORT"], settings_dict["POOL"]
    bouncer = PgBouncer(
        "session", str(original[0]), int(original[1]), str(settings_dict["USER"])
    )
    line = f"* = host={original[0]} port={original[1]}\n"
    text = bouncer.ini.read_text()
    assert line in text
    bouncer.ini.write_text(
        text.replace(line, f"{line[:-1]} pool_mode=transaction pool_size=4\n")
    )
    connections.close_all()
    engines.dispose_all()
    try:
        bouncer.start()
        settings_dict["HOST"], settings_dict["PORT"] = "127.0.0.1", str(bouncer.port)
        settings_dict["POOL"] = {
            **original[2],
            "pgbouncer": "transaction",
            "pgbouncer_admin": admin_url(bouncer),
        }
        yield bouncer
    finally:
        connections.close_all()
        engines.dispose_all()
        settings_dict["HOST"], settings_dict["PORT"], settings_dict["POOL"] = original
        bouncer.close()


def test_the_app_databases_own_pool_mode_and_size_are_what_count(
    per_database_bouncer, pool_options
):
    # Review 16: W016 and the capacity plan read the global pool_mode and
    # default_pool_size of SHOW CONFIG, not the database's own.
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")
    connections["default"].close()

    problems = deployment_problems(["default"])

    assert [p for p in problems if p.id == "W016"] == []
    output = poolstatus("--database", "default", "--workers", "3")
    port = per_database_bouncer.port
    assert (
        f"PgBouncer at 127.0.0.1:{port} (version 1.18.0, transaction mode for "
        f"{connections.settings['default']['NAME']!r}, max_client_conn=1000, "
        "pool_size=4)" in output
    )
    assert "default_pool_size" not in output
    assert "Warning" not in output

    # Declared session: PgBouncer says transaction for this database.
    pool_options(pgbouncer="session")
    [problem] = [p for p in deployment_problems(["default"]) if p.id == "W016"]
    assert (
        f"runs {connections.settings['default']['NAME']!r} in pool_mode 'transaction'."
        in problem.msg
    )
    assert SECRET not in str(problem)


@pytest.mark.parametrize(
    ("conninfo", "shown"),
    [
        (
            "postgresql://u:pw@127.0.0.1:1,127.0.0.2:2/pgbouncer",
            "127.0.0.1:1,127.0.0.2:2",
        ),
        ("postgresql://u:pw@a,b:6432/pgbouncer", "a:5432,b:6432"),
        ("host=a,b port=1,2 dbname=pgbouncer", "a:1,b:2"),
        ("postgresql://u:pw@h/pgbouncer", "h:5432"),
        ("dbname=pgbouncer", "localhost:5432"),
    ],
)
def test_console_address_shows_each_host_with_its_port(conninfo, shown):
    from django_poolconf.backends.postgresql.pgbouncer_admin import console_address

    assert console_address(conninfo) == shown
