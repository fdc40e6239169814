"""The capacity plan on MySQL/MariaDB: the server's max_connections, read by the probe."""

from __future__ import annotations

from io import StringIO

from django.core.management import call_command
from django.db import connections
from django.test import override_settings

from django_poolconf.checks import check_deployment
from django_poolconf.health import check_health, runner


def _max_connections(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT @@max_connections")
        [(value,)] = cursor.fetchall()
    connections[alias].close()
    return int(value)


def _poolstatus(*args: str) -> str:
    runner._probes.clear()
    out = StringIO()
    call_command("poolstatus", *args, stdout=out)
    return out.getvalue()


def _row(output: str, server: str) -> list[str]:
    """The server's row of the capacity table."""
    table = output.split("Capacity, worst case")[1]
    return next(line.split() for line in table.splitlines() if server in line)


def test_the_probe_reads_max_connections_and_the_connections_in_use(mysql_pool):
    limit = _max_connections(mysql_pool)
    runner._probes.clear()

    [health] = check_health([mysql_pool], max_age=0, server_view=True).databases

    view = health.server_view
    assert view is not None, health
    assert view.max_connections == limit
    assert view.reserved_connections == 0
    assert 1 <= view.total_connections <= limit  # the probe's own, at least


def test_poolstatus_workers_compare_the_worst_case_with_max_connections(mysql_pool):
    limit = _max_connections(mysql_pool)
    workers = limit // 3 + 1  # 3 per process (pool_size 2 + max_overflow 1)
    settings = connections.settings[mysql_pool]
    server = f"{settings['HOST']}:{settings['PORT']}"

    crowded = _poolstatus("--database", mysql_pool, "--workers", str(workers))
    roomy = _poolstatus("--database", mysql_pool, "--workers", "2")

    assert _row(crowded, server)[-4:] == [
        str(3 * workers), str(limit), "EXCEEDS", "max_connections",
    ]  # fmt: skip
    assert _row(roomy, server)[-3:] == ["6", str(limit), "fits"]
    assert f"of max_connections={limit} in use" in roomy


def test_check_deploy_warns_when_the_fleet_exceeds_max_connections(mysql_pool):
    limit = _max_connections(mysql_pool)
    runner._probes.clear()
    health = {"TIMEOUT": 5, "CACHE": 0}

    with override_settings(POOLCONF={"HEALTH": {**health, "WORKERS": limit}}):
        messages = check_deployment(databases=[mysql_pool])
    with override_settings(POOLCONF={"HEALTH": {**health, "WORKERS": 2}}):
        quiet = check_deployment(databases=[mysql_pool])

    assert [m.id for m in messages] == ["django_poolconf.W004"], messages
    assert f"more than the {limit} it allows" in messages[0].msg
    assert quiet == []
