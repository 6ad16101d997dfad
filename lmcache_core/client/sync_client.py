"""The blocking client: one DEALER socket, one call at a time."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from typing import Any

import zmq

from lmcache_core.client.api import (
    DEFAULT_TIMEOUT_SECONDS,
    CallTimeout,
    ClientMethods,
    ConnectionLost,
    normalize_url,
)
from lmcache_core.client.connection_watch import RESENDABLE_OPS, ConnectionWatch
from lmcache_core.client.hash_lookup import HashLookupForm
from lmcache_core.protocol.codec import ClientCodec
from lmcache_core.protocol.errors import RemoteError
from lmcache_core.protocol.multipart import recv_frames, send_frames
from lmcache_core.protocol.types import CacheKey
from lmcache_core.security.key_sources import client_api_key

WATCH_SLICE_MS = 50
"""A call waiting for its reply checks for a broken connection this often."""


class MPClient(ClientMethods):
    """A synchronous client of one MP server.

    Calls are serialized (thread-safe, one in flight). A call that times out
    leaves nothing behind: its late reply is recognized by its uid and dropped by
    the next call.

    Args:
        url: ``tcp://host:port`` or ``host:port``.
        timeout: Default per-call timeout in seconds.
        api_key: The API key every request carries. ``None``: the environment's
            (``LMCACHE_API_KEY`` or ``LMCACHE_API_KEY_FILE``, as upstream's
            clients read them), else none.

    Raises:
        KeySourceError: ``api_key`` is empty, or the environment's key source
            cannot be used.
    """

    def __init__(
        self, url: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS, api_key: str | None = None
    ) -> None:
        self.url = normalize_url(url)
        self.timeout = timeout
        self._codec = ClientCodec(client_api_key(api_key))
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._watch = ConnectionWatch(self._socket)
        self._socket.connect(self.url)
        self._uids = itertools.count()
        self._lock = threading.Lock()
        self.hash_form = HashLookupForm()
        """Whether this connection's :meth:`fast_lookup` sends hashes or tokens."""

    def fast_lookup(self, key: CacheKey, tp_size: int = 1, *, timeout: float | None = None) -> Any:
        """:meth:`lookup`, sent as chunk hashes when the server allows it.

        The first call reads the server's ``get_experimental`` reply; a server
        that does not offer ``lookup_hashes`` (upstream's, an engine that needs
        tokens) or refuses it gets the token form, on this call and the next ones.
        """
        form = self.hash_form
        if not form.known:
            try:
                form.learn(self.get_experimental(timeout=timeout))
            except RemoteError:
                form.learn(None)
        hashed = form.key_for(key)
        if hashed is not None:
            try:
                return self.lookup_hashes(hashed, tp_size, timeout=timeout)
            except RemoteError as exc:
                form.refused(exc)
        return self.lookup(key, tp_size, timeout=timeout)

    def call(self, op: str, *args: Any, timeout: float | None = None) -> Any:
        """Send one request and wait for its reply.

        Raises:
            CallTimeout: No reply within the timeout.
            RemoteError: The server answered with an error reply.
        """
        return self._invoke(op, args, timeout)

    def _invoke(self, op: str, args: Sequence[Any], timeout: float | None) -> Any:
        budget = self.timeout if timeout is None else timeout
        with self._lock:
            uid = next(self._uids)
            frames = self._codec.request_frames(uid, op, args)
            # A break before this send does not concern this call: ZeroMQ queues the
            # request for the next connection.
            self._watch.drain()
            send_frames(self._socket, frames)
            uid_frame = frames[0]
            deadline = time.monotonic() + budget
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CallTimeout(f"{op}: no reply from {self.url} within {budget:g} s")
                # A blocking receive with a timeout is faster than poll + receive; in
                # slices, so that a broken connection is noticed within one.
                wait_ms = min(WATCH_SLICE_MS, max(1, int(remaining * 1000)))
                self._socket.setsockopt(zmq.RCVTIMEO, wait_ms)
                try:
                    reply = recv_frames(self._socket)
                except zmq.Again:
                    if self._watch.drain():
                        self._after_break(op, frames)
                    continue
                if reply[0] == uid_frame:  # else: the late reply of an earlier, timed-out call
                    return self._codec.decode_reply(op, reply[1:])

    def _after_break(self, op: str, frames: list[bytes]) -> None:
        """The connection broke with ``frames`` in flight: re-send, or raise ConnectionLost."""
        if op not in RESENDABLE_OPS:
            raise ConnectionLost(
                f"{op}: the connection to {self.url} broke with the call in flight "
                "(its reply cannot arrive; whether the server ran it is unknown)"
            )
        send_frames(self._socket, frames)  # the same uid: either reply is the answer

    @property
    def broken_connections(self) -> int:
        """Connections to the server that broke so far (ZeroMQ reconnected after each)."""
        return self._watch.broken

    def close(self) -> None:
        """Close the socket (pending calls of other threads fail)."""
        self._watch.close()
        self._socket.close(linger=0)
        self._context.term()

    def __enter__(self) -> MPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
