"""Notices when a client's connection to the server breaks, from ZeroMQ's socket monitor.

A DEALER reconnects by itself when its TCP connection breaks, and the server's ROUTER
then knows the client under a new routing id: the reply to a request that came over the
old connection cannot be delivered (the server counts it ``undeliverable``), and a
request still queued in the old connection's buffers is lost. Without this watch the
caller waits out its whole timeout. With it, a call in flight when the connection broke
is re-sent at once when it is idempotent (:data:`RESENDABLE_OPS`) and fails at once with
:class:`~lmcache_core.client.api.ConnectionLost` otherwise.

A request sent *after* the break is not affected: ZeroMQ keeps it queued and sends it
over the new connection. Monitor events arrive a little after the fact, so a call sent
in the instant between a break and its event counts as in flight: it is re-sent or fails
although its reply might have come (a rare, harmless race: the late reply is dropped by
its uid).
"""

from __future__ import annotations

import contextlib
from typing import Any

import zmq
from zmq.backend import Socket as _CompiledSocket
from zmq.utils.monitor import parse_monitor_message

WATCHED = zmq.EVENT_DISCONNECTED
RESENDABLE_OPS = frozenset({"noop", "ping", "get_chunk_size", "get_experimental"})
"""Operations a client re-sends after a broken connection: doing one twice changes
nothing (a ping refreshes a heartbeat; the others only read). Everything else (lookups,
stores, retrieves, registrations, prefetch queries that consume a result) fails with
``ConnectionLost``: whether the server ran it is unknown."""

_POLLIN = int(zmq.POLLIN)
_get: Any = _CompiledSocket.get


class ConnectionWatch:
    """Counts a socket's broken connections; read on the thread that uses the socket.

    Args:
        socket: The client's DEALER. The monitor's PAIR socket is of the same kind
            (an asyncio socket's monitor is an asyncio socket).
    """

    def __init__(self, socket: zmq.Socket[Any]) -> None:
        self.broken = 0
        """Broken connections seen so far (each one a reconnect ZeroMQ starts by itself)."""
        self.events: zmq.Socket[Any] = socket.get_monitor_socket(WATCHED)
        self._socket = socket

    def pending(self) -> bool:
        """Whether an event waits to be read (no system call: ZeroMQ's EVENTS flag)."""
        return bool(_get(self.events, zmq.EVENTS) & _POLLIN)

    def drain(self) -> int:
        """Read the waiting events (without blocking); how many were broken connections."""
        broken = 0
        while self.pending():
            message = self.events.recv_multipart(zmq.NOBLOCK)
            broken += self.count(message)
        return broken

    def count(self, message: list[bytes]) -> int:
        """Count one monitor message; 1 if it is a broken connection."""
        if parse_monitor_message(message)["event"] == zmq.EVENT_DISCONNECTED:
            self.broken += 1
            return 1
        return 0

    def close(self) -> None:
        """Detach the monitor and close its socket (before the context is terminated)."""
        with contextlib.suppress(zmq.ZMQError):  # the socket is already closed
            self._socket.disable_monitor()
        self.events.close(linger=0)
