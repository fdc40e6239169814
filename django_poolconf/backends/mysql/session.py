"""A pooled mysqlclient connection and what mysqlclient does not expose of the C client.

mysqlclient (2.3 included) has no call for ``COM_RESET_CONNECTION`` nor for the
server's status flags (in a transaction or not). Both are in the C client library it
is linked against (MariaDB Connector/C, or MySQL's libmysqlclient), reached here with
:mod:`ctypes` through the connection's native handle (``_get_native_connection()``):
``mysql_reset_connection()`` in both libraries, ``mariadb_get_infov()`` in MariaDB's
only. Where a function is missing, :func:`reset_session` falls back to
``COM_CHANGE_USER`` (``change_user()``), which resets the session as fully but
authenticates again, and :func:`in_transaction` answers ``None`` (unknown).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import select
from typing import Any, Final

import MySQLdb
from MySQLdb import _mysql
from MySQLdb.connections import Connection

__all__ = [
    "PooledConnection",
    "in_transaction",
    "native_reset_available",
    "reset_session",
    "wait_readable",
]

_CAPSULE_NAME: Final = b"_mysql.connection.native_connection"
#: ``enum mariadb_value``'s MARIADB_CONNECTION_SERVER_STATUS (mysql.h, Connector/C 3.x).
_SERVER_STATUS: Final = 30
#: The server status flags (mysql_com.h).
_STATUS_IN_TRANS: Final = 0x0001


@functools.cache
def _library() -> Any:
    # dlopen() of the extension module: dlsym() then finds the client library's
    # functions among its dependencies (or in it, when linked statically).
    return ctypes.CDLL(_mysql.__file__)


def _function(name: str, restype: Any, argtypes: list[Any]) -> Any:
    try:
        function = getattr(_library(), name)
    except (AttributeError, OSError):
        return None
    function.restype = restype
    function.argtypes = argtypes
    return function


# A prototype of our own: setting argtypes on ctypes.pythonapi's shared function
# object would change it for every other user in the process.
_get_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi)
)
_reset_connection = _function("mysql_reset_connection", ctypes.c_int, [ctypes.c_void_p])
_get_info = _function(
    "mariadb_get_infov", ctypes.c_char, [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
)


def _handle(connection: Connection) -> int | None:
    native = getattr(connection, "_get_native_connection", None)
    if native is None:  # mysqlclient before 2.1
        return None
    return int(_get_pointer(native(), _CAPSULE_NAME))


def native_reset_available() -> bool:
    """Whether ``COM_RESET_CONNECTION`` can be sent (else returns authenticate again)."""
    return _reset_connection is not None and hasattr(
        Connection, "_get_native_connection"
    )


class PooledConnection(Connection):  # type: ignore[misc]
    """A mysqlclient connection owned by a pool, and by the process that opened it.

    In a forked child it refuses to run anything, and it is never closed there:
    closing sends ``COM_QUIT``, which would end the parent's session. Its socket
    is swapped for ``/dev/null`` in the child instead, which the client library
    then writes its goodbye to and closes.
    """

    pid: int = 0  # the process that opened it
    generation: int = 0  # process.GENERATION.value when it was opened
    user: str = ""
    database: str | None = None
    secret: Any = None  # a redaction.Secret: the password, for change_user()
    #: The session as Django's setup left it, set again after each reset: USE, SET
    #: ROLE, SET NAMES, OPTIONS["init_command"], Django's assignments.
    setup_sql: bytes = b""
    setup_pending: bool = False  # setup_sql sent on return, its results not read yet
    #: The client library's character set after connecting: a borrower may change it
    #: (``set_character_set()``), which no reset of the session undoes.
    charset: str = ""
    encoding_at_connect: str = ""
    #: The socket's (st_dev, st_ino): a forked child may have closed it and opened
    #: a file of its own under the same descriptor.
    socket_id: tuple[int, int] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.pid = os.getpid()  # first: connecting runs the checked calls
        super().__init__(*args, **kwargs)
        self.charset = self.character_set_name()
        self.encoding_at_connect = self.encoding
        with contextlib.suppress(OSError, MySQLdb.Error):
            self.socket_id = _file_id(self.fileno())

    def __repr__(self) -> str:
        # mysqlclient's repr names the host: pool logs must not.
        state = "open" if self.open else "closed"
        return f"<{type(self).__name__} {state} at {id(self):#x}>"

    # Everything that talks to the server checks the process first: a child must
    # send nothing on its parent's session, not a ROLLBACK nor a ping.

    def _check_owner(self) -> None:
        if self.pid != os.getpid():
            raise MySQLdb.OperationalError(
                2006,
                "this connection belongs to the parent process; a forked child must "
                "open its own",
            )

    def query(self, query: Any) -> Any:
        self._check_owner()
        return super().query(query)

    def send_query(self, query: Any) -> Any:
        self._check_owner()
        return super().send_query(query)

    def autocommit(self, on: bool) -> Any:
        self._check_owner()
        return super().autocommit(on)

    def commit(self) -> Any:
        self._check_owner()
        return super().commit()

    def rollback(self) -> Any:
        self._check_owner()
        return super().rollback()

    def ping(self, *args: Any) -> Any:
        self._check_owner()
        return super().ping(*args)

    def change_user(self, *args: Any) -> Any:
        self._check_owner()
        return super().change_user(*args)

    def close(self) -> None:
        if self.pid != os.getpid():
            self.detach()
            return
        super().close()

    def restore_charset(self) -> None:
        """The client library's character set back to the one it connected with.

        Only when a borrower changed it: reading it is no round trip, setting it is.
        """
        if (
            self.character_set_name() != self.charset
            or self.encoding != self.encoding_at_connect
        ):
            self.set_character_set(self.charset)

    def detach(self) -> None:
        """In a forked child: make closing this connection touch nothing of the parent's."""
        if not self.open:
            return
        try:
            fileno = self.fileno()
        except MySQLdb.Error:
            return
        try:
            ours = _file_id(fileno) == self.socket_id
        except OSError:
            ours = False
        if not ours:
            # The child closed the socket and the descriptor now names something of
            # its own: closing would close that. Never closed, kept from collection.
            _ABANDONED.append(self)
            return
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(devnull, fileno)
        finally:
            os.close(devnull)
        super().close()

    def __del__(self) -> None:
        if self.pid and self.pid != os.getpid():
            self.detach()


#: Inherited connections whose descriptor a forked child reused: never closed.
_ABANDONED: list[PooledConnection] = []


def _file_id(fileno: int) -> tuple[int, int]:
    status = os.fstat(fileno)
    return status.st_dev, status.st_ino


def reset_session(connection: PooledConnection) -> None:
    """Reset the session as if it were new (``COM_RESET_CONNECTION``), keeping it open.

    Rolls back a transaction, drops temporary tables, forgets user variables and
    prepared statements, releases table locks and ``GET_LOCK()`` locks, and sets every
    session variable back to its global value (character set and autocommit too).

    :raises MySQLdb.Error: when the server did not take it.
    """
    connection._check_owner()
    handle = _handle(connection) if _reset_connection is not None else None
    if handle is not None:
        if _reset_connection(handle) != 0:
            raise MySQLdb.OperationalError(
                connection.errno() or 2013, "resetting the connection failed"
            )
        return
    secret = connection.secret
    connection.change_user(
        connection.user, "" if secret is None else secret.reveal(), connection.database
    )


def in_transaction(connection: Connection) -> bool | None:
    """Whether the server has a transaction open on it (no round trip); None if unknown."""
    if _get_info is None:
        return None
    handle = _handle(connection)
    if handle is None:
        return None
    status = ctypes.c_uint(0)
    if _get_info(handle, _SERVER_STATUS, ctypes.byref(status)) != b"\x00":
        return None
    return bool(status.value & _STATUS_IN_TRANS)


def wait_readable(connection: Connection, timeout: float) -> bool:
    """Whether the server sent something within ``timeout`` seconds."""
    try:
        readable, _, _ = select.select([connection.fileno()], [], [], timeout)
    except (OSError, ValueError, MySQLdb.Error):
        return True  # nothing to wait on: let the read report it
    return bool(readable)
