"""A blocking subscriber of the KV event stream (``subscribe_kv_events``).

One DEALER socket per subscription, as upstream's client keeps one request per
stream: the subscription request, then one ``ack`` after each batch read (the
credit for the next one), and ``cancel`` at :meth:`KVEventSubscriber.close`.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import zmq

from lmcache_core.client.api import DEFAULT_TIMEOUT_SECONDS, CallTimeout, normalize_url
from lmcache_core.protocol.codec import ClientCodec
from lmcache_core.protocol.errors import ERROR_OP, ErrorInfo, exception_for
from lmcache_core.protocol.kv_event_records import KVEventBatch
from lmcache_core.security.key_sources import client_api_key

OP = "subscribe_kv_events"
_batch_decoder = msgspec.msgpack.Decoder(KVEventBatch)


class StreamClosed(ConnectionError):
    """The server ended the stream (a newer subscription of the same instance, or shutdown)."""


class KVEventSubscriber:
    """Subscribe to one model's cache changes; iterate to read batches.

    Args:
        url: ``tcp://host:port`` or ``host:port``.
        instance_id: The subscriber's instance id (one subscription each).
        model_name: Whose records to receive.
        cursor: Resume after this sequence number (0: from the start of the log).
        max_events: Records per batch at most (1..1024).
        timeout: Seconds :meth:`next_batch` waits by default.
        api_key: As for :class:`~lmcache_core.client.MPClient`.
    """

    def __init__(
        self,
        url: str,
        instance_id: int,
        model_name: str,
        cursor: int = 0,
        max_events: int = 256,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        api_key: str | None = None,
    ) -> None:
        self.url = normalize_url(url)
        self.timeout = timeout
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(self.url)
        frames = ClientCodec(client_api_key(api_key)).request_frames(
            0, OP, [instance_id, model_name, cursor, max_events]
        )
        self._uid = frames[0]
        self._socket.send_multipart(frames)
        self._owed_ack = False
        self._ended = False

    def next_batch(self, timeout: float | None = None) -> KVEventBatch:
        """The next batch (sending the credit for it first, after the first one).

        Raises:
            CallTimeout: None within the timeout (the stream stays usable).
            StreamClosed: The server ended the stream.
            RemoteError: The server refused the subscription.
        """
        if self._ended:
            raise StreamClosed("the KV event stream has ended")
        if self._owed_ack:
            self._socket.send_multipart([self._uid, b"", b"ack"])
            self._owed_ack = False
        budget = self.timeout if timeout is None else timeout
        if not self._socket.poll(int(budget * 1000)):
            raise CallTimeout(f"{OP}: no batch from {self.url} within {budget:g} s")
        reply = self._socket.recv_multipart()
        if len(reply) >= 3 and msgspec.msgpack.decode(reply[1]) == ERROR_OP:
            self._ended = True
            raise exception_for(msgspec.msgpack.decode(reply[2], type=ErrorInfo))
        if len(reply) < 3:
            self._ended = True
            raise StreamClosed("the server ended the KV event stream")
        self._owed_ack = True
        return _batch_decoder.decode(reply[2])

    def __iter__(self) -> Iterator[KVEventBatch]:
        while True:
            try:
                yield self.next_batch()
            except StreamClosed:
                return

    def close(self) -> None:
        """Cancel the stream and close the socket."""
        if not self._ended:
            self._socket.send_multipart([self._uid, b"", b"cancel"])
        self._socket.close(linger=100)
        self._context.term()

    def __enter__(self) -> KVEventSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
