"""Counts the TCP connections of the request server's ROUTER, from ZeroMQ's socket monitor.

A reply ZeroMQ cannot deliver (``ROUTER_MANDATORY``: the peer's routing id is unknown)
means the connection the request came on is gone. These counters say whether and when
connections came and went: a client that reconnected shows as one more ``accepted`` and
one more ``disconnected``. ZeroMQ reports the events on an inproc PAIR socket; one
daemon thread reads them, so the request loop's socket is untouched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

logger = logging.getLogger("lmcache.server.connections")

POLL_INTERVAL_MS = 100
"""How often the reader checks for stop while no event arrives."""

HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
WATCHED = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_ACCEPT_FAILED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | HANDSHAKE_FAILED
)


@dataclass
class ConnectionStats:
    """Counters for ``/status`` (``requests.connections``).

    Attributes:
        accepted: TCP connections accepted.
        accept_failed: Accepts that failed (for example out of file descriptors).
        handshake_succeeded: ZMTP handshakes completed (a peer ZeroMQ routes to).
        handshake_failed: Handshakes that failed (not ZMTP, a wrong version, auth).
        disconnected: Connections that ended (closed by either side or broken).
    """

    accepted: int = 0
    accept_failed: int = 0
    handshake_succeeded: int = 0
    handshake_failed: int = 0
    disconnected: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters and ``current``: accepted connections not yet ended."""
        return {**vars(self), "current": self.accepted - self.disconnected}


class ConnectionMonitor:
    """Reads a socket's monitor events on a thread of its own and counts them.

    Created on the thread that owns ``socket`` (the monitor is attached there); the
    events are read on the monitor's thread.

    Args:
        socket: The ROUTER to watch.
    """

    def __init__(self, socket: zmq.Socket[Any]) -> None:
        self.stats = ConnectionStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._events = socket.get_monitor_socket(WATCHED)
        self._events.setsockopt(zmq.RCVTIMEO, POLL_INTERVAL_MS)
        self._thread = threading.Thread(target=self._run, name="lmcache-zmq-monitor", daemon=True)
        self._thread.start()

    def status(self) -> dict[str, int]:
        """The counters, for ``/status``."""
        with self._lock:
            return self.stats.as_dict()

    def stop(self, timeout: float) -> None:
        """Stop the reader (bounded) and close its socket."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    message = self._events.recv_multipart()
                except zmq.Again:
                    continue
                except zmq.ZMQError:  # the context is being destroyed
                    return
                self._count(parse_monitor_message(message))
        finally:
            self._events.close(linger=0)

    def _count(self, event: Mapping[str, Any]) -> None:
        kind, endpoint, value = event["event"], event.get("endpoint", b""), event["value"]
        with self._lock:
            if kind == zmq.EVENT_ACCEPTED:
                self.stats.accepted += 1
            elif kind == zmq.EVENT_ACCEPT_FAILED:
                self.stats.accept_failed += 1
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.stats.handshake_succeeded += 1
            elif kind & HANDSHAKE_FAILED:
                self.stats.handshake_failed += 1
            elif kind == zmq.EVENT_DISCONNECTED:
                self.stats.disconnected += 1
        # The connection's file descriptor (``value`` of accepted/disconnected) pairs the
        # two events of one connection in a DEBUG log.
        level = (
            logging.INFO if kind & (HANDSHAKE_FAILED | zmq.EVENT_ACCEPT_FAILED) else logging.DEBUG
        )
        logger.log(level, "connection event %s on %s (value %s)", _name(kind), endpoint, value)


def _name(kind: int) -> str:
    try:
        return zmq.Event(kind).name or str(kind)
    except ValueError:
        return str(kind)
