"""Streamed replies: one request, many reply batches, paced by the client's credits.

Upstream 0.5.6's only streamed operation is ``subscribe_kv_events``. Its wire
form: the request is an ordinary one; the server answers ``[uid, op, batch]``
at once, and one more batch after every ``[uid, b"", b"ack"]`` the client sends
(a credit); ``[uid, b"", b"cancel"]`` ends it. The end of a stream is a reply
with no payload, ``[uid, op]``. Streams are keyed by the client's identity and
the uid.

Each open stream has one sender thread that waits for a credit, then for the
next batch of its :class:`StreamSource`, and pushes it through the request
server's reply path. The table is bounded: at the limit the stream idle the
longest is ended to make room. A stream whose client is gone (a reply could not
be delivered) is ended.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from lmcache_core.engine.contract import StreamEnded, StreamSource

logger = logging.getLogger("lmcache.server")

ACK = b"ack"
CANCEL = b"cancel"
MAX_STREAMS = 64
POLL_SECONDS = 0.25
"""How often a waiting sender looks whether its stream was ended meanwhile."""


Push = Callable[[list[bytes]], None]
Encode = Callable[[Any], bytes]


class _Stream:
    def __init__(
        self,
        head: list[bytes],
        source: StreamSource,
        table: StreamTable,
    ) -> None:
        self.head = head  # [client, uid, op frame]
        self.source = source
        self._table = table
        self._credits = 1  # the first batch goes out without an ack
        self._wake = threading.Condition()
        self._ended = False
        self._peer_gone = False
        self.last_active = time.monotonic()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, name="lmcache-stream", daemon=True)

    def grant(self) -> None:
        with self._wake:
            self._credits += 1
            self.last_active = time.monotonic()
            self._wake.notify()

    def end(self, *, peer_gone: bool = False) -> None:
        with self._wake:
            self._ended = True
            self._peer_gone = self._peer_gone or peer_gone
            self._wake.notify()

    def _wait_credit(self) -> bool:
        with self._wake:
            while not self._ended and self._credits == 0:
                if self.source.ended:  # replaced, or its log stopped: no credit is coming
                    return False
                self._wake.wait(POLL_SECONDS)
            return not self._ended

    def _run(self) -> None:
        try:
            while self._wait_credit():
                try:
                    batch = self.source.next_batch(POLL_SECONDS)
                except StreamEnded:
                    break
                if batch is None:
                    continue
                with self._wake:
                    if self._ended:
                        break
                    self._credits -= 1
                self._table.push([*self.head, self._table.encode(batch)])
                self.sent += 1
        except Exception:  # a source's bug ends its stream, never the server
            logger.exception("stream %r failed", self.head[2])
        finally:
            try:
                self.source.close()
            finally:
                if not self._peer_gone:
                    self._table.push(list(self.head))  # end of stream: no payload
                self._table.forget(self)


class StreamTable:
    """The open streams of one request server.

    Args:
        push: Sends reply frames to a client from the calling thread (the
            pool-reply path: each thread its own socket).
        encode: Encodes one batch as a frame.
        release: Called on a sender thread before it ends (closes its socket).
        max_streams: Streams open at once (the idlest is ended beyond it).
    """

    def __init__(
        self,
        push: Push,
        encode: Encode,
        *,
        release: Callable[[], None] = lambda: None,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        self.push, self.encode, self.release = push, encode, release
        self.max_streams = max_streams
        self._streams: dict[tuple[bytes, bytes], _Stream] = {}
        self._lock = threading.Lock()
        self.opened = 0
        self.ended_for_room = 0

    def open(self, head: list[bytes], source: StreamSource) -> None:
        """Start streaming ``source`` to the client of ``head`` ([client, uid, op frame])."""
        stream = _Stream(head, source, self)
        with self._lock:
            previous = self._streams.pop((head[0], head[1]), None)
            idlest = None
            if previous is None and len(self._streams) >= self.max_streams:
                idlest = min(self._streams.values(), key=lambda s: s.last_active)
                self.ended_for_room += 1
            self._streams[(head[0], head[1])] = stream
            self.opened += 1
        for old in (previous, idlest):
            if old is not None:
                old.end()
        stream.thread.start()

    def control(self, client: bytes, uid: bytes, action: bytes) -> bool:
        """Apply an ``ack`` or ``cancel``; False when no such stream is open."""
        with self._lock:
            stream = self._streams.get((client, uid))
        if stream is None:
            return False
        if action == ACK:
            stream.grant()
        elif action == CANCEL:
            stream.end()
        else:
            return False
        return True

    def peer_gone(self, client: bytes, uid: bytes) -> None:
        """A reply to this stream's client could not be delivered: end it quietly."""
        with self._lock:
            stream = self._streams.get((client, uid))
        if stream is not None:
            stream.end(peer_gone=True)

    def close(self, timeout: float) -> None:
        """End every stream and wait (bounded) for their senders."""
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream.end()
        deadline = time.monotonic() + timeout
        for stream in streams:
            stream.thread.join(max(0.0, deadline - time.monotonic()))

    def forget(self, stream: _Stream) -> None:
        """Drop an ended stream (on its sender thread, its last act) and release the thread."""
        with self._lock:
            key = (stream.head[0], stream.head[1])
            if self._streams.get(key) is stream:
                del self._streams[key]
        self.release()

    def status(self) -> dict[str, int]:
        """Counts for ``/status``."""
        with self._lock:
            return {
                "open": len(self._streams),
                "opened": self.opened,
                "ended_for_room": self.ended_for_room,
            }
