"""Bulk ``SET`` and ``GET`` over plain sockets, without copying the values in Python.

redis-py joins nothing when it sends a large value, but it cannot send one value made
of two buffers (the frame header and the payload), and it receives a value through a
``BytesIO`` and then a new ``bytes``: two copies of every byte, and the allocation
of a fresh object per ``GET``. For the data path the ``resp`` adapter therefore
speaks the two commands itself (RESP2, as redis-py does by default):

* ``SET``: the command prefix, the header and the payload go out in one
  scatter-gather ``sendmsg``; nothing is joined.
* ``GET``: the reply's length line is read into a small buffer; the value is then
  received with ``recv_into`` straight into the caller's buffers (header, payload).
  A value of another length than expected is a miss: the connection is dropped
  rather than drained, so a wrong object costs no reading.

Every socket call is bounded by the socket timeout. A connection that met any error
is closed, never reused; a call that failed on a pooled (possibly stale) connection
with a connection error is retried once on a fresh one, as redis-py does, and never
after a timeout.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

READ_CHUNK = 64 * 1024
"""Bytes asked for per ``recv`` while looking for a reply's first line."""
MAX_LINE = 4096
"""Longest reply line accepted (a length, ``+OK`` or an error message)."""


class RespServerError(RuntimeError):
    """The server answered with an error reply (``-ERR ...``, ``-NOAUTH ...``)."""


class RespProtocolError(ConnectionError):
    """The server's reply is not what the command gets; the connection is dropped."""


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(_bulk(arg) for arg in args)


def _advance(views: list[memoryview], done: int) -> list[memoryview]:
    """What is left of ``views`` after their first ``done`` bytes went out."""
    while views and done >= views[0].nbytes:
        done -= views[0].nbytes
        views = views[1:]
    if views and done:
        views = [views[0][done:], *views[1:]]
    return views


class BulkConnection:
    """One connection that sends ``SET`` values scatter-gather and receives ``GET`` in place.

    Args:
        host: Server host.
        port: Server port.
        username: ACL user for ``AUTH`` (None: the default user).
        password: Password for ``AUTH`` (None: no ``AUTH``).
        connect_timeout_s: Bound on opening the connection.
        socket_timeout_s: Bound on every send and receive.

    Raises:
        OSError: The connection could not be opened.
        RespServerError: ``AUTH`` was refused.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None,
        password: str | None,
        connect_timeout_s: float,
        socket_timeout_s: float,
    ) -> None:
        self._sock = socket.create_connection((host, port), timeout=connect_timeout_s)
        self.broken = False
        self._pending = bytearray()  # bytes received past the last reply line
        try:
            self._sock.settimeout(socket_timeout_s)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if password is not None:
                auth = [b"AUTH"] + ([username.encode()] if username else []) + [password.encode()]
                self._send([memoryview(_command(*auth))])
                self._expect_ok()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the socket; the connection is not used again."""
        self.broken = True
        with contextlib.suppress(OSError):
            self._sock.close()

    def set(self, name: bytes, parts: Sequence[memoryview]) -> None:
        """``SET name <parts joined>``, the parts sent as they are.

        Raises:
            RespServerError: The server refused the value (e.g. OOM).
        """
        size = sum(part.nbytes for part in parts)
        head = b"*3\r\n$3\r\nSET\r\n" + _bulk(name) + b"$%d\r\n" % size
        self._send([memoryview(head), *parts, memoryview(b"\r\n")])
        self._expect_ok()

    def asking(self) -> None:
        """``ASKING``: the next command may touch a slot this Redis Cluster node is importing."""
        self._send([memoryview(_command(b"ASKING"))])
        self._expect_ok()

    def get_into(self, name: bytes, parts: Sequence[memoryview]) -> bool:
        """``GET name`` into ``parts``; False when missing or of another length.

        On False for another length the connection is closed (its reply unread).
        """
        self._send([memoryview(_command(b"GET", name))])
        line = self._line()
        if not line.startswith(b"$"):
            raise RespProtocolError(f"GET answered {line[:80]!r}")
        length = int(line[1:])
        if length < 0:
            return False  # no such key
        if length != sum(part.nbytes for part in parts):
            self.close()  # reading a value we do not want costs more than reconnecting
            return False
        for part in parts:
            self._receive_into(part)
        trailer = bytearray(2)
        self._receive_into(memoryview(trailer))
        if trailer != b"\r\n":
            raise RespProtocolError("GET value not followed by CRLF")
        return True

    # -- wire ------------------------------------------------------------------------------

    def _send(self, views: list[memoryview]) -> None:
        views = [view for view in views if view.nbytes]
        while views:
            views = _advance(views, self._sock.sendmsg(views))

    def _line(self) -> bytes:
        """One reply line without its CRLF; an error reply raises."""
        while True:
            end = self._pending.find(b"\r\n")
            if end >= 0:
                break
            if len(self._pending) > MAX_LINE:
                raise RespProtocolError("reply line too long")
            chunk = self._sock.recv(READ_CHUNK)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self._pending += chunk
        line = bytes(self._pending[:end])
        del self._pending[: end + 2]
        if line.startswith(b"-"):
            raise RespServerError(line[1:].decode(errors="replace"))
        return line

    def _expect_ok(self) -> None:
        line = self._line()
        if line != b"+OK":
            raise RespProtocolError(f"expected +OK, got {line[:80]!r}")

    def _receive_into(self, view: memoryview) -> None:
        """Fill ``view``: first from the bytes already received, then from the socket."""
        taken = min(len(self._pending), view.nbytes)
        if taken:
            view[:taken] = self._pending[:taken]
            del self._pending[:taken]
        while taken < view.nbytes:
            got = self._sock.recv_into(view[taken:])
            if not got:
                raise ConnectionError("the server closed the connection mid-value")
            taken += got


class BulkPool:
    """At most ``size`` :class:`BulkConnection` objects, reused while sound.

    Args:
        connect: Opens a new connection.
        size: Connections at most (callers beyond it wait up to ``wait_s``).
        wait_s: Longest wait for a free connection.
    """

    def __init__(self, connect: Callable[[], BulkConnection], size: int, wait_s: float) -> None:
        self._connect = connect
        self._slots = threading.BoundedSemaphore(size)
        self._wait_s = wait_s
        self._idle: list[BulkConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(self, work: Callable[[BulkConnection], T]) -> T:
        """``work(connection)``; retried once on a fresh connection if a pooled one was broken.

        Raises:
            TimeoutError: No connection became free in time, or the server did not answer.
            OSError: The connection failed (refused, reset, closed).
            RespServerError: The server answered with an error.
        """
        if not self._slots.acquire(timeout=self._wait_s):
            raise TimeoutError("no free connection to the server")
        try:
            for attempt in range(2):
                with self._lock:
                    connection = self._idle.pop() if self._idle else None
                reused = connection is not None
                if connection is None:
                    connection = self._connect()
                try:
                    result = work(connection)
                except (ConnectionError, BrokenPipeError) as exc:
                    connection.close()
                    if reused and attempt == 0 and not isinstance(exc, RespProtocolError):
                        continue  # e.g. the server restarted since this connection was opened
                    raise
                except BaseException:
                    connection.close()
                    raise
                self._give_back(connection)
                return result
            raise AssertionError("unreachable")
        finally:
            self._slots.release()

    def _give_back(self, connection: BulkConnection) -> None:
        with self._lock:
            if connection.broken or self._closed:
                connection.close()
            else:
                self._idle.append(connection)

    def close(self) -> None:
        """Close the idle connections; busy ones are closed when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
