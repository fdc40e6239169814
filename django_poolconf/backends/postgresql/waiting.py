"""``read_timeout``: how long a statement in flight may wait for the server's next bytes.

psycopg waits for the server's answer with no bound of its own. When the network path
stalls with a statement in flight, the answer, or the server's ``statement_timeout``
error, is lost on the way, and only TCP can end the wait: ``tcp_user_timeout`` once
sent data goes unacknowledged, keepalives otherwise (tens of seconds), and nothing at
all behind a TCP proxy that stays up (PgBouncer, HAProxy, a cloud SQL proxy), whose
kernel acknowledges everything. With ``read_timeout``, a statement that hears nothing
from the server for that long gives the connection up as lost, as pgjdbc's
``socketTimeout`` does.

The loop speaks psycopg's generator protocol (a generator yields what it waits for
and is sent what is ready), which every psycopg 3 release shares.
"""

from __future__ import annotations

import select
import time
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg import pq

if TYPE_CHECKING:
    from collections.abc import Generator

__all__ = ["wait_for_answer"]

_ACTIVE: Final = pq.TransactionStatus.ACTIVE
# psycopg's Wait and Ready values are selectors' EVENT_READ (1) and EVENT_WRITE (2).
_READ: Final = 1
_WRITE: Final = 2
_POLL_EVENTS: Final = {
    _READ: select.POLLIN,
    _WRITE: select.POLLOUT,
    _READ | _WRITE: select.POLLIN | select.POLLOUT,
}
#: How often a wait with no statement in flight looks again (LISTEN, for one).
_IDLE_TICK_S: Final = 1.0


def wait_for_answer(
    connection: psycopg.Connection[Any],
    gen: Generator[Any, Any, Any],
    read_timeout: float,
) -> Any:
    """Run psycopg's generator ``gen`` on ``connection``, as psycopg's own wait does.

    While a statement is in flight (the connection is ``ACTIVE``), each wait for the
    server lasts at most ``read_timeout`` seconds; then the connection is closed, its
    protocol state being unknown, and :exc:`psycopg.OperationalError` is raised. A
    wait with no statement in flight (for notifications) is not bounded.
    """
    pgconn = connection.pgconn
    fileno = pgconn.socket
    poller = select.poll()
    try:
        state = next(gen)
        while True:
            poller.register(fileno, _POLL_EVENTS[int(state)])
            deadline = time.monotonic() + read_timeout
            while True:
                busy = pgconn.transaction_status == _ACTIVE
                remaining = deadline - time.monotonic() if busy else _IDLE_TICK_S
                if busy and remaining <= 0:
                    raise _lost(connection, read_timeout)
                events = poller.poll(remaining * 1000)
                if events:
                    break
                if not busy:
                    deadline = time.monotonic() + read_timeout
            ready = 0
            for _, event in events:
                if event & (select.POLLIN | select.POLLERR | select.POLLHUP):
                    ready |= _READ  # libpq reads, and finds the error or the end
                if event & select.POLLOUT:
                    ready |= _WRITE
            state = gen.send(ready)
    except StopIteration as done:
        return done.value


def _lost(connection: psycopg.Connection[Any], read_timeout: float) -> Exception:
    info = connection.info
    where = f"host {info.host!r}, port {info.port}"
    connection.pgconn.finish()
    return psycopg.OperationalError(
        f"no answer from the server ({where}) within read_timeout={read_timeout:g} s; "
        "the connection is closed"
    )
