"""A TCP proxy on loopback that breaks the network on demand, for the fault tests.

Like psycopg_pool's ``proxy`` fixture: the proxied alias connects to the proxy, which
forwards to the real server, until a test cuts the path:

- :meth:`FaultProxy.drop` resets every connection through it (an RST to both ends,
  as a firewall or a load balancer that forgets its flows), and forwards new ones;
- :meth:`FaultProxy.stall` accepts and forwards nothing: bytes already sent stay in
  the kernel's buffers, new connections are accepted and never reach the server (a
  network path that went dark);
- :meth:`FaultProxy.refuse` stops listening: new connections are refused at once (a
  server host that is up, with nothing on the port), established ones go on;
- :meth:`FaultProxy.restore` ends a stall or a refusal: held bytes flow again, held
  connections are connected on.

Within a stall the proxy's kernel still acknowledges what the client sends and
answers its keepalive probes, so neither ``tcp_user_timeout`` nor TCP keepalives can
notice it; a stall on a real network trips both. One thread per direction of each
connection, and one accepting: :meth:`close` stops them all and waits for them.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from typing import Final

#: How often a blocked thread looks at the proxy's state.
TICK_S: Final = 0.02


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.closed = threading.Event()
        self.forgotten = False  # reset the client when it next sends
        self.threads: list[threading.Thread] = []

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.client, self.upstream) if s is not None]


class FaultProxy:
    """Forward 127.0.0.1:``port`` to ``target``, and break that path on demand."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._threads: list[threading.Thread] = []
        self._flowing = threading.Event()
        self._flowing.set()
        self._closing = threading.Event()
        self._listener: socket.socket | None = None
        self.accepted = 0  # connections accepted, in all
        self._moved_at = time.monotonic()  # when bytes last went through
        self._listen()

    # -- faults ------------------------------------------------------------------

    def drop(self) -> int:
        """Reset every connection through the proxy; return how many there were.

        Returns once both ends have been sent their RST.
        """
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            _reset(link)
        _join(links)
        return len(links)

    def forget(self) -> int:
        """Forget every connection, as a NAT or load balancer that dropped its flows.

        The server's end is reset now; the client's end hears nothing until it sends
        again, and then gets an RST. Returns how many connections there were.
        """
        with self._lock:
            links = [link for link in self._links if not link.forgotten]
        for link in links:
            link.forgotten = True
            if link.upstream is not None:
                _reset_socket(link.upstream)
        return len(links)

    def stall(self) -> None:
        """Forward nothing more, either way, and connect nothing new upstream."""
        self._flowing.clear()

    def refuse(self) -> None:
        """Stop listening: new connections are refused; established ones go on."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)

    def restore(self) -> None:
        """Forward again, and listen again on the same port."""
        self._flowing.set()
        with self._lock:
            listening = self._listener is not None
        if not listening:
            self._listen()

    def settled(self, quiet_s: float = 0.1, within_s: float = 10.0) -> None:
        """Wait until no byte has gone through for ``quiet_s``: nothing is in flight.

        For a connection just returned, whose reset's answer must have reached the
        client before a fault is made.
        """
        deadline = time.monotonic() + within_s
        while time.monotonic() - self._moved_at < quiet_s:
            assert time.monotonic() < deadline, "the proxy never went quiet"
            time.sleep(TICK_S)

    def connections(self) -> int:
        """Connections open through the proxy now."""
        with self._lock:
            return sum(not link.closed.is_set() for link in self._links)

    def close(self) -> None:
        """Close every connection and the listener, and wait for every thread."""
        self._closing.set()
        self._flowing.set()
        self.refuse()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            _reset(link)
        _join(links)
        for thread in list(self._threads):
            thread.join(timeout=5)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"proxy threads still running: {alive}"

    # -- forwarding -----------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        self._start(self._accept, listener, name="accept")

    def _start(self, target, *args, name: str, link: _Link | None = None) -> None:
        thread = threading.Thread(
            target=target, args=args, name=f"proxy {self.port} {name}", daemon=True
        )
        self._threads.append(thread)
        if link is not None:
            link.threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._closing.is_set():
            if not _readable(listener):
                with self._lock:
                    if self._listener is not listener:
                        return
                continue
            try:
                client, _ = listener.accept()
            except OSError:
                return
            link = _Link(client)
            with self._lock:
                self._links.append(link)
                self.accepted += 1
            self._start(self._connect, link, name="connect", link=link)

    def _connect(self, link: _Link) -> None:
        # A connection accepted in a stall waits, as its SYN would, for the path.
        while not self._flowing.wait(TICK_S):
            if link.closed.is_set() or self._closing.is_set():
                return
        if link.closed.is_set():
            return
        try:
            link.upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(link)
            return
        link.upstream.settimeout(None)
        self._start(self._pipe, link, link.client, link.upstream, name="up", link=link)
        self._pipe(link, link.upstream, link.client)

    def _pipe(self, link: _Link, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not link.closed.is_set():
                if not self._flowing.is_set():
                    # Read nothing: what the peer sends stays in the kernel's buffers.
                    self._flowing.wait(TICK_S)
                    continue
                if not _readable(source):
                    continue
                if link.forgotten and source is link.client:
                    break  # what a forgotten flow gets: an RST
                data = source.recv(65536)
                if not data:
                    break
                # Held if a stall began meanwhile: forwarded when it ends.
                while not self._flowing.wait(TICK_S):
                    if link.closed.is_set():
                        return
                sink.sendall(data)
                self._moved_at = time.monotonic()
        except OSError:
            pass
        if link.forgotten:
            if source is link.client:
                _reset(link)
            return
        # One side closed: close both, as the server or the client would see it.
        link.closed.set()
        for sock in link.sockets():
            _close(sock)


def _readable(sock: socket.socket) -> bool:
    try:
        return bool(select.select([sock], [], [], TICK_S)[0])
    except (OSError, ValueError):  # closed meanwhile
        return False


def _reset(link: _Link) -> None:
    """Close both ends with an RST, not a FIN: the connection is lost, not ended."""
    link.closed.set()
    for sock in link.sockets():
        _reset_socket(sock)


def _reset_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # No shutdown() first: that would send a FIN. The RST leaves when the last
        # thread waiting on the socket lets go of it: see _join().
        sock.close()


def _join(links: list[_Link]) -> None:
    """Wait for the links' threads: until then, the kernel holds their sockets open."""
    current = threading.current_thread()
    for link in links:
        for thread in link.threads:
            if thread is not current:
                thread.join(timeout=5)


def _close(sock: socket.socket) -> None:
    # shutdown() wakes a thread blocked on the socket; close() alone may not.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
