"""``manage.py poolstatus``: the table, --json, --check, --watch, --workers, and the server's view."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from django_poolconf import engines
from django_poolconf.health import runner
from tests.conftest import wsgi_get
from tests.health.test_runner import TIMEOUT, extra_alias, use_health

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[3]  # the repository
MARGIN = 1.0


@pytest.fixture(autouse=True)
def fresh_pools_and_probes():
    connections.close_all()
    engines.dispose_all()
    runner._probes.clear()
    with use_health():
        yield
    runner._probes.clear()


@pytest.fixture
def hung_server():
    import socket

    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield listener
    listener.close()


def poolstatus(*args: str) -> str:
    out = StringIO()
    call_command("poolstatus", *args, stdout=out)
    return out.getvalue()


def test_table_shows_each_pool_its_settings_numbers_and_health(cluster, test_db_name):
    cluster.wait_for_replica()
    wsgi_get("/item/")  # one idle connection in this process's pool of 'default'

    output = poolstatus()

    lines = output.splitlines()
    header = next(line for line in lines if line.startswith("ALIAS"))
    assert header.split() == [
        "ALIAS", "ROLE", "SERVER", "POOL_SIZE", "MAX_OVERFLOW", "TIMEOUT", "RECYCLE",
        "IN", "OUT", "OVERFLOW", "WAITING", "HEALTH", "LATENCY", "LAG", "BREAKER",
    ]  # fmt: skip
    default = next(line for line in lines if line.startswith("default "))
    replica = next(line for line in lines if line.startswith("replica "))
    server = f"postgres@127.0.0.1:{cluster.primary.port}/{test_db_name}"
    assert default.split()[:15] == [
        "default", "primary", server, "4", "4", "10", "s", "3600", "s", "1", "0", "-3",
        "0", "healthy", default.split()[14],
    ]  # fmt: skip
    assert default.split()[15] == "ms"
    assert replica.split()[:2] == ["replica", "replica"]
    assert "healthy" in replica.split()
    assert "0 s" in replica  # replication lag
    assert not any(line.startswith("plain") for line in lines)  # not pooled


def test_table_shows_the_checkouts_waiting_and_max_waiting(pool_options):
    pool_options(max_waiting=25)
    wsgi_get("/item/")

    lines = poolstatus().splitlines()

    default = next(line for line in lines if line.startswith("default "))
    assert default.split()[12] == "0/25"  # WAITING: none of at most 25


def test_server_view_counts_connections_by_application_name(cluster, test_db_name):
    wsgi_get("/item/")

    output = poolstatus("--database", "default")

    assert f"Connections to 127.0.0.1:{cluster.primary.port}/{test_db_name}" in output
    row = next(
        line for line in output.splitlines() if "django_poolconf:default:" in line
    )
    # The pooled connection of this process, idle, not the command's own probe.
    assert row.split() == [f"django_poolconf:default:{os.getpid()}", "idle", "1"]
    assert "of max_connections=200 in use on this server; 3 reserved" in output


def test_json_is_the_payload_of_the_view(cluster):
    cluster.wait_for_replica()

    printed = json.loads(poolstatus("--json"))
    served = wsgi_get("/health/db").json()

    def shape(value):
        if isinstance(value, dict):
            return {key: shape(item) for key, item in value.items()}
        return None

    assert shape(printed) == shape(served)
    assert printed["status"] == served["status"] == "healthy"
    assert printed["detail"] is True  # the operator sees errors and hosts
    assert printed["pid"] == os.getpid()
    assert printed["databases"]["replica"]["server"].endswith("/test_app")


def test_check_exits_0_when_healthy(cluster):
    cluster.wait_for_replica()

    poolstatus("--check")  # no SystemExit


def test_check_exits_2_when_degraded(cluster):
    cluster.replica.stop(mode="immediate")
    try:
        with pytest.raises(SystemExit) as exited:
            poolstatus("--check")
    finally:
        cluster.replica.start()

    assert exited.value.code == 2


def test_check_exits_1_within_the_timeout_when_a_primary_hangs(hung_server):
    port = hung_server.getsockname()[1]
    with extra_alias("hung", HOST="127.0.0.1", PORT=str(port)):
        started = time.monotonic()
        with pytest.raises(SystemExit) as exited:
            poolstatus("--check", "--json")
        took = time.monotonic() - started

    assert exited.value.code == 1
    assert took < TIMEOUT + MARGIN


def test_database_limits_the_aliases_and_may_repeat():
    output = poolstatus("--database", "replica", "--database", "replica")

    assert [
        line.split()[0]
        for line in output.splitlines()
        if line.startswith(("default ", "replica "))
    ] == ["replica"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--database", "plain"],
            "DATABASES['plain'] does not use a django-poolconf backend.",
        ),
        (["--watch", "0"], "--watch takes a number of seconds > 0."),
        (["--watch", "1", "--check"], "Use --check or --watch, not both."),
        (["--timeout", "-1"], "--timeout takes a number of seconds > 0."),
        (["--workers", "0"], "--workers and --hosts take an integer >= 1."),
    ],
)
def test_usage_errors_name_the_mistake(args, message):
    with pytest.raises(CommandError) as raised:
        poolstatus(*args)

    assert str(raised.value) == message
    assert raised.value.returncode == 3


def test_workers_compare_the_worst_case_with_max_connections(cluster):
    crowded = poolstatus("--database", "default", "--workers", "30")
    roomy = poolstatus("--database", "default", "--workers", "3", "--hosts", "2")

    row = next(
        line for line in crowded.splitlines() if line.strip().startswith("127.0.0.1")
    )
    # Every alias on the server counts: default's 4 + 4 and analytics' (the test
    # router's second primary, on the same server) 4 + 4, so 16 per process x 30
    # workers x 1 host against 200 - 3 reserved.
    assert row.split() == [
        f"127.0.0.1:{cluster.primary.port}", "default,analytics", "16", "30", "1",
        "480", "197", "EXCEEDS", "max_connections",
    ]  # fmt: skip
    row = next(
        line for line in roomy.splitlines() if line.strip().startswith("127.0.0.1")
    )
    assert row.split()[-4:] == ["2", "96", "197", "fits"]


def test_workers_default_to_web_concurrency(monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "30")

    output = poolstatus("--database", "default")

    assert "EXCEEDS max_connections" in output


def test_without_workers_the_capacity_plan_says_how_to_get_one(monkeypatch):
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)

    output = poolstatus("--database", "default")

    assert "Capacity: give --workers N" in output


@pytest.mark.parametrize("as_json", [False, True])
def test_watch_refreshes_until_interrupted(as_json):
    out = StringIO()
    args = ["--watch", "0.1", "--database", "default", *(["--json"] if as_json else [])]
    marker = '{"status"' if as_json else "-- "

    def interrupt_after_three_refreshes() -> None:
        deadline = time.monotonic() + 20
        while out.getvalue().count(marker) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_after_three_refreshes)
    interrupter.start()
    try:
        call_command("poolstatus", *args, stdout=out)  # returns on Ctrl-C
    finally:
        interrupter.join()

    assert out.getvalue().count(marker) >= 3
    if as_json:  # one JSON document per line
        documents = [json.loads(line) for line in out.getvalue().splitlines()]
        assert {d["status"] for d in documents} == {"healthy"}


def test_manage_py_check_exits_1_on_a_hung_primary_and_3_on_a_usage_error(
    cluster, hung_server
):
    port = hung_server.getsockname()[1]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        # tests.settings then uses these servers instead of starting its own.
        "POOLCONF_TEST_PRIMARY_URL": f"postgres://postgres@127.0.0.1:{port}/app",
        "POOLCONF_TEST_REPLICA_URL": cluster.replica.url("postgres"),
    }

    def run(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "django", "poolstatus", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return result, time.monotonic() - started

    (checked, took), (misused, _) = (
        run("--check", "--timeout", "1"),
        run("--watch", "-1"),
    )

    assert checked.returncode == 1, checked.stderr
    assert "unhealthy (timeout)" in checked.stdout
    assert took < 1 + MARGIN + 5  # + the interpreter's and Django's start-up
    assert misused.returncode == 3, misused.stderr
    assert "--watch takes a number of seconds > 0." in misused.stderr
