"""A real PgBouncer in front of the suite's primary, on a free loopback port.

A missing ``pgbouncer`` binary fails the tests that need it: CI installs it (Debian
package ``pgbouncer``). PgBouncer refuses to run as root; as root it runs as the
embedded server's account. ``auth_type = trust``: the embedded server trusts loopback.
Its configuration is PgBouncer's defaults but for the pool mode and the sizes: no
``ignore_startup_parameters``, so a client that sends ``options`` is refused, as in
most deployments.
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
from typing import Final

__all__ = ["PgBouncer"]

START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0
POLL_INTERVAL_S: Final = 0.05
#: Server connections per database and user. In transaction mode fewer than the
#: suite's pools hold, so that clients share them; in session mode each client
#: connection keeps one for its whole life, so there must be one for every connection
#: the pools may open (and a few for the tests' own), or the others wait for ever.
POOL_SIZES: Final = {"transaction": 4, "session": 20}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgBouncer:
    """One pgbouncer process in ``mode`` in front of ``host:port``; every database."""

    def __init__(self, mode: str, host: str, port: int, user: str) -> None:
        binary = shutil.which("pgbouncer") or shutil.which("/usr/sbin/pgbouncer")
        if binary is None:
            raise RuntimeError(
                "pgbouncer is not installed: install the Debian package 'pgbouncer'; "
                "the PgBouncer tests need it."
            )
        self.binary = binary
        self.mode = mode
        self.port = _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="poolconf-pgbouncer-"))
        self.uid: int | None = None
        self.gid: int | None = None
        if os.geteuid() == 0:
            import pwd

            from django_poolconf.embedded import OS_USER

            entry = pwd.getpwnam(OS_USER)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
        (self.directory / "userlist.txt").write_text(f'"{user}" ""\n')
        self.ini = self.directory / "pgbouncer.ini"
        self.ini.write_text(
            "[databases]\n"
            f"* = host={host} port={port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.directory / 'userlist.txt'}\n"
            f"pool_mode = {mode}\ndefault_pool_size = {POOL_SIZES[mode]}\n"
            "min_pool_size = 0\nreserve_pool_size = 0\nmax_client_conn = 1000\n"
            f"admin_users = {user}\n"
        )
        self.log = self.directory / "pgbouncer.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, str(self.ini)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self.uid,
                group=self.gid,
                extra_groups=None if self.uid is None else [],
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"pgbouncer exited with code {self.process.returncode} while "
                    f"starting:\n{self.tail()}"
                )
            try:
                # A TCP connect, not a PostgreSQL one, which would open a server one.
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError as err:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"pgbouncer did not listen on port {self.port}:\n{self.tail()}"
                    ) from err
            time.sleep(POLL_INTERVAL_S)

    def stop(self) -> None:
        """Stop it at once (SIGTERM: PgBouncer's immediate shutdown; SIGINT waits for clients)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
