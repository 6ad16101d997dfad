"""A TCP relay on loopback whose connections a test can cut: a dropped connection on demand.

A ZeroMQ client connected through it reconnects (to the relay, which opens a new
connection to the server) after :meth:`TcpRelay.cut`, exactly as after a real network
drop: the server sees one connection end and a new one start, with a new routing id.
Real sockets, real bytes: nothing is parsed or faked.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from tests.server_process import free_port


class TcpRelay:
    """Relays ``127.0.0.1:<port>`` to ``target`` until stopped.

    Args:
        target_port: The server's port on 127.0.0.1.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.1)
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="tcp-relay", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """``host:port`` of the relay, for a client."""
        return f"127.0.0.1:{self.port}"

    def cut(self) -> int:
        """Reset every open connection (both sides); how many were cut."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                # SO_LINGER 0: the close sends a reset, as a broken connection does. The
                # shutdown first: a pump thread blocked in recv() on this socket keeps a
                # plain close() from taking effect until it returns.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        return len(pairs)

    def stop(self) -> None:
        """Cut everything and stop accepting."""
        self._stop.set()
        self._thread.join(5.0)
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self.accepted += 1
                self._pairs.append((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass  # cut (or the peer closed): the other pump sees it too
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
