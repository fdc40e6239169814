"""The example project under gunicorn, on a database of its own of the suite's primary.

For the shutdown and soak tests: :func:`serve` migrates a fresh database, starts
``gunicorn --worker-class gthread`` on a free loopback port with the settings of
``tests/http_settings.py``, and stops it (SIGTERM, then SIGKILL to its group) if the
test did not. What the primary logged about the app's backends, and which of them
are still connected, are read with :func:`app_backends` and :func:`log_of_backends`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from django_poolconf.embedded import EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
#: The example's pools: ``databases_from_env(pool_size=5, max_overflow=5)``.
POOL_CAPACITY = 10
#: What the server logs when a client goes away without closing its connection
#: (the app's database logs DEBUG1 messages, where the first one is, outside a
#: transaction).
UNCLEAN_CLOSE = re.compile(
    r"unexpected EOF on client connection|could not receive data from client"
)
_PID = re.compile(r"\[(\d+)\]")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Gunicorn:
    """A running gunicorn master serving the example project."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    database: str
    workers: int
    log_start: int = 0
    stopped_in_s: float | None = field(default=None)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """The master's children: its workers."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def wait_for_workers(self, timeout: float = START_TIMEOUT_S) -> list[int]:
        deadline = time.monotonic() + timeout
        while len(pids := self.worker_pids()) < self.workers:
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.05)
        return pids

    def terminate(self) -> float:
        """SIGTERM to the master; wait for it to exit; return how long that took."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(STOP_TIMEOUT_S)
        self.stopped_in_s = time.monotonic() - started
        return self.stopped_in_s

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def environment(server: EmbeddedServer, database: str) -> dict[str, str]:
    # The test run's settings and PG* variables must not steer the example.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PG", "DATABASE_", "DJANGO_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="tests.http_settings",
        DATABASE_URL=server.url(database),
        PYTHONPATH=str(ROOT),
    )
    return env


def _gunicorn_options(workers: int, threads: int, graceful_timeout: int) -> list[str]:
    options = ["--worker-class", "gthread", "--workers", str(workers)]
    options += ["--threads", str(threads), "--graceful-timeout", str(graceful_timeout)]
    options += ["--log-level", "info", "--worker-tmp-dir", "/dev/shm"]
    help_text = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    if "--no-control-socket" in help_text:
        # Newer gunicorns otherwise create a control socket in the working directory.
        options.append("--no-control-socket")
    return options


@contextlib.contextmanager
def serve(
    server: EmbeddedServer,
    admin: psycopg.Connection[Any],
    log_dir: Path,
    *,
    workers: int,
    threads: int,
    graceful_timeout: int,
) -> Iterator[Gunicorn]:
    """Serve the example project on a new database of ``server`` until the block ends."""
    database = f"http_{os.getpid()}_{time.monotonic_ns()}"
    admin.execute(f'CREATE DATABASE "{database}"')
    # A client that goes away without PostgreSQL's Terminate message, outside a
    # transaction, is logged at DEBUG1 only ("unexpected EOF on client connection").
    admin.execute(f'ALTER DATABASE "{database}" SET log_min_messages = debug1')
    env = environment(server, database)
    migrate = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--verbosity", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    port = free_port()
    log = log_dir / "gunicorn.log"
    command = [sys.executable, "-m", "gunicorn"]
    command += _gunicorn_options(workers, threads, graceful_timeout)
    command += ["--bind", f"127.0.0.1:{port}", "example_project.wsgi"]
    server_log = server.data_dir / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    app = Gunicorn(
        process=process,
        url=f"http://127.0.0.1:{port}",
        log=log,
        database=database,
        workers=workers,
        log_start=server_log.stat().st_size,
    )
    try:
        _wait_for_http(app)
        yield app
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        with contextlib.suppress(psycopg.Error):
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _wait_for_http(app: Gunicorn) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert app.process.poll() is None, app.output()
        try:
            with urllib.request.urlopen(app.url + "/api/notes", timeout=5) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{err}\n{app.output()}") from err
        except OSError:
            assert time.monotonic() < deadline, app.output()
        time.sleep(0.05)


def app_backends(
    admin: psycopg.Connection[Any], database: str
) -> list[tuple[Any, ...]]:
    """(pid, application_name, state) of every client backend on the app's database."""
    return admin.execute(
        "SELECT pid, application_name, state FROM pg_stat_activity"
        " WHERE datname = %s AND backend_type = 'client backend'",
        [database],
    ).fetchall()


def wait_for_no_backend(
    admin: psycopg.Connection[Any], database: str, timeout: float = 10.0
) -> list[tuple[Any, ...]]:
    """Wait until no backend is on ``database``; return those left at the timeout."""
    deadline = time.monotonic() + timeout
    while (left := app_backends(admin, database)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def log_of_backends(
    server: EmbeddedServer, app: Gunicorn
) -> tuple[set[int], list[str]]:
    """The pids of the app's backends since it started, and the lines logged by them.

    The suite's primary logs connections and disconnections (``tests/servers.py``);
    a backend of the app is one whose ``connection authorized`` line names its database.
    """
    with (server.data_dir / "server.log").open(errors="replace") as log:
        log.seek(app.log_start)
        lines = log.read().splitlines()
    authorized = f"database={app.database} "
    pids = set()
    for line in lines:
        if "connection authorized:" in line and (
            authorized in line or line.endswith(f"database={app.database}")
        ):
            match = _PID.search(line)
            if match:
                pids.add(int(match.group(1)))
    theirs = [
        line
        for line in lines
        if (match := _PID.search(line)) and int(match.group(1)) in pids
    ]
    return pids, theirs


def unclean_closes(lines: list[str]) -> list[str]:
    return [line for line in lines if UNCLEAN_CLOSE.search(line)]


def open_client_ports(pids: list[int], server_port: int) -> set[int]:
    """The local ports of the TCP connections to ``server_port`` that ``pids`` hold open.

    Read from ``/proc``: the processes' socket descriptors, matched with the kernel's
    table of TCP connections. A connection a process closed is not there, whatever
    its backend on the server still does; the server's ``client_port`` of a backend
    tells which connection it serves.
    """
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            text = Path(f"/proc/{pids[0]}/net/{table}").read_text()
            for line in text.splitlines()[1:]:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if (
                    int(remote.rsplit(":", 1)[1], 16) == server_port
                    and fields[9] in inodes
                ):
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports
