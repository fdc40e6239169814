"""A real MariaDB server for the MySQL backend's tests, on a free loopback port.

By default the tests start their own ``mariadbd`` (Debian package ``mariadb-server``)
in a temporary directory: ``mariadb-install-db`` makes its data directory, and the
server listens on 127.0.0.1 only, with a user and password of the tests' own. A
missing binary fails the tests that need it: CI installs it. MariaDB refuses to run
as root; as root it runs as the package's ``mysql`` account. ``POOLCONF_TEST_MYSQL_URL``
(``mysql://user:password@host:port/``) names an existing server instead; the tests
that restart the server then need one of their own and say so.

The server writes a binary log (``server_id`` 1), so that a second ``mariadbd`` can
replicate it: :meth:`MariaDB.initialize_replica` starts one, replicating with GTIDs
from the primary's first event on, and :meth:`MariaDB.wait_for` waits until it has
applied everything the primary logged.

Nothing here touches a server it did not start (a system service on port 3306, say).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

__all__ = ["URL_VARIABLE", "MariaDB", "external_settings"]

#: Names an existing server to use instead of starting one.
URL_VARIABLE: Final = "POOLCONF_TEST_MYSQL_URL"
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 30.0
POLL_INTERVAL_S: Final = 0.1
#: The tests' account on a server they start (not a secret: a throwaway server).
USER: Final = "poolconf"
PASSWORD: Final = "poolconf-test"
#: The account MariaDB runs as when the tests run as root (Debian's package makes it).
OS_USER: Final = "mysql"


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or shutil.which(f"/usr/sbin/{name}")
        if found:
            return found
    raise RuntimeError(
        f"{names[0]} is not installed: install the Debian package 'mariadb-server'; "
        "the MySQL backend's tests need it."
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def external_settings() -> dict[str, Any] | None:
    """HOST, PORT, USER and PASSWORD of the server ``POOLCONF_TEST_MYSQL_URL`` names, or None."""
    url = os.environ.get(URL_VARIABLE)
    if not url:
        return None
    parts = urlsplit(url)
    return {
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": str(parts.port or 3306),
        "USER": unquote(parts.username or "root"),
        "PASSWORD": unquote(parts.password or ""),
    }


class MariaDB:
    """One ``mariadbd`` in a temporary directory, listening on 127.0.0.1 only."""

    def __init__(self, *, server_id: int = 1) -> None:
        self.server_id = server_id
        self.server = _binary("mariadbd", "mysqld")
        self.install_db = _binary("mariadb-install-db", "mysql_install_db")
        self.port = _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="poolconf-mariadb-"))
        self.data = self.directory / "data"
        self.socket = self.directory / "mariadbd.sock"
        self.log = self.directory / "mariadbd.log"
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = OS_USER
            import pwd

            entry = pwd.getpwnam(OS_USER)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self.process: subprocess.Popen[bytes] | None = None

    def settings(self) -> dict[str, Any]:
        """HOST, PORT, USER and PASSWORD of this server, for ``DATABASES``."""
        return {
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "USER": USER,
            "PASSWORD": PASSWORD,
        }

    def initialize(self) -> None:
        """Make the data directory, start the server and add the tests' account."""
        self._install()
        self.start()
        self.execute(
            f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'",
            f"GRANT ALL ON *.* TO '{USER}'@'127.0.0.1'",
        )

    def initialize_replica(self, primary: MariaDB) -> None:
        """Make the data directory, start the server as a replica of ``primary``, and
        wait until it has applied the primary's log (the tests' account included)."""
        self._install()
        self.start()
        self.execute(
            f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, "
            f"MASTER_USER='{USER}', MASTER_PASSWORD='{PASSWORD}', "
            "MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos",
            "START SLAVE",
        )
        self.wait_for(primary)

    def wait_for(self, primary: MariaDB) -> None:
        """Wait until this replica has applied everything ``primary`` has logged."""
        [(position,)] = primary.execute("SELECT @@global.gtid_binlog_pos")
        [(waited,)] = self.execute(
            f"SELECT MASTER_GTID_WAIT('{position}', {START_TIMEOUT_S})"
        )
        if waited != 0:
            raise RuntimeError(
                f"the replica did not reach the primary's position {position}:\n"
                f"{self.tail()}"
            )

    def execute(self, *statements: str) -> Any:
        """Run ``statements`` as root over the socket; return the last one's rows."""
        import MySQLdb

        root = MySQLdb.connect(
            unix_socket=str(self.socket), user="root", autocommit=True
        )
        try:
            cursor = root.cursor()
            for statement in statements:
                cursor.execute(statement)
            return cursor.fetchall()
        finally:
            root.close()

    def _install(self) -> None:
        command = [
            self.install_db,
            "--no-defaults",
            f"--datadir={self.data}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        if self.user is not None:
            command.append(f"--user={self.user}")
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=START_TIMEOUT_S
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"mariadb-install-db failed ({result.returncode}):\n"
                f"{(result.stdout + result.stderr)[-2000:]}"
            )

    def start(self) -> None:
        command = [
            self.server,
            "--no-defaults",
            f"--datadir={self.data}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.directory / 'mariadbd.pid'}",
            "--skip-name-resolve",
            f"--server-id={self.server_id}",
            # The primary logs its writes for a replica; the replica logs nothing.
            "--log-bin=mariadb-bin" if self.server_id == 1 else "--skip-log-bin",
            "--binlog-format=ROW",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--max-connections=200",
            # MariaDB's default server character set (latin1) stays: a reset
            # session falls back to it, and the backend must set utf8mb4 again.
        ]
        if self.server_id != 1:
            command.append("--read-only")  # as replicas are run
        if self.user is not None:
            command.append(f"--user={self.user}")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mariadbd exited with code {self.process.returncode} while "
                    f"starting:\n{self.tail()}"
                )
            # The socket file appears once the server accepts connections.
            if self.socket.exists():
                try:
                    socket.create_connection(
                        ("127.0.0.1", self.port), timeout=1
                    ).close()
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mariadbd did not listen on port {self.port}:\n{self.tail()}"
                )
            time.sleep(POLL_INTERVAL_S)

    def stop(self) -> None:
        """Stop the server (SIGTERM: a clean shutdown), killing it if it hangs."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
